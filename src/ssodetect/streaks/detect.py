"""Streaks in one CCD exposure: joining fragments, precise centring, rejecting what is not an SSO.

Faint or masked trails come out of the extraction in pieces.  Pieces that are
collinear (their angles and the line joining them agree) and close end to end
are joined into one streak; faint trails broken into many small blobs are found
as chains of collinear faint detections (a Hough transform of their centres,
then runs along each line with small gaps), and trails too faint for any piece to be extracted are found on a
smoothed image and by a matched line filter (:func:`line_segments`), all verified by the trailed-PSF fit; every
trail longer than ``min_length`` is then
measured with the trailed-PSF fit (:func:`~ssodetect.streaks.model.fit_trail`)
starting from the modified-moment centre.  Streaks longer than ``max_length``
(satellites crossing the detector), bleed columns of saturated stars and
diffraction spikes (whose line, extended, meets a saturated core) are labelled
``satellite``, ``bleed`` and ``spike``; they never reach the linking.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
from astropy.table import Table

from ssodetect.detect.extract import FWHM_TO_SIGMA, MASK_FIT_MAX_INFO, masked_information, near_edge
from ssodetect.streaks._chains import hough_cells, line_candidates, next_cell
from ssodetect.streaks.model import TrailFit, fit_trail, moment_centre, scan_trail_ends, section_amplitudes, trail_cost

__all__ = ["join_fragments", "detach_bright_pieces", "uncovered_pieces", "collinear_chains", "refine_trails",
           "cut_ends", "spike_axes", "edge_distance", "edge_clear", "edge_cut", "patchy_trail", "label_patchy_trails",
           "EDGE_MIN_TRAIL_FWHM"]

log = logging.getLogger(__name__)


def _ends(x, y, length, theta):
    h = 0.5 * length
    c, s = math.cos(theta), math.sin(theta)
    return np.array([x - h * c, y - h * s]), np.array([x + h * c, y + h * s])


def _axis_diff(a, b):
    """Difference of axis angles [rad] (arrays), modulo pi, in [0, pi/2]."""
    d = np.abs(a - b) % math.pi
    return np.minimum(d, math.pi - d)


def join_fragments(det: Table, candidates: np.ndarray, *, max_gap: float, max_angle: float) -> list[list[int]]:
    """Groups of collinear trail fragments (indices into ``det``), each group one streak.

    Two fragments join when their axis angles differ by less than ``max_angle``
    [rad] (plus the angle uncertainty of short pieces), the line between their
    centres runs along both axes, the shorter one's centre lies on the longer one's
    line (within 2 px plus its axis uncertainty over the gap), and the gap between
    them along that line is at most ``max_gap`` [px] (overlapping pieces join).
    """
    idx = [int(i) for i in np.nonzero(candidates)[0]]
    parent = {i: i for i in idx}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    xs, ys = np.asarray(det["x"], float), np.asarray(det["y"], float)
    lens, ths = np.asarray(det["length"], float), np.asarray(det["theta"], float)
    order = np.asarray(idx, np.int64)
    for k, i in enumerate(idx):  # each fragment against the later ones at once
        js = order[k + 1 :]
        reach = 0.5 * (lens[i] + lens[js]) + max_gap
        js = js[(np.abs(xs[i] - xs[js]) <= reach) & (np.abs(ys[i] - ys[js]) <= reach)]
        if not js.size:
            continue
        tol = max_angle + np.arctan2(2.0, np.maximum(np.minimum(lens[i], lens[js]), 2.0))
        link = np.arctan2(ys[js] - ys[i], xs[js] - xs[i])
        # gap between the pieces along the line (negative when they overlap)
        gap = np.hypot(xs[js] - xs[i], ys[js] - ys[i]) - 0.5 * (lens[i] + lens[js])
        # the shorter piece's centre must lie on the longer one's line: within 2 px, plus what the longer one's axis
        # error allows over the gap (an angle test alone lets a 10 px trail 15 px beside a 2000 px satellite join it)
        longer = lens[i] >= lens[js]
        lx, ly = np.where(longer, xs[i], xs[js]), np.where(longer, ys[i], ys[js])
        lt = np.where(longer, ths[i], ths[js])
        sx, sy = np.where(longer, xs[js], xs[i]), np.where(longer, ys[js], ys[i])
        perp = np.abs(-(sx - lx) * np.sin(lt) + (sy - ly) * np.cos(lt))
        long_tol = max_angle + np.arctan2(2.0, np.maximum(np.maximum(lens[i], lens[js]), 2.0))
        on_line = perp <= 2.0 + np.maximum(gap, 0.0) * np.tan(long_tol)
        joined = ((_axis_diff(ths[i], ths[js]) <= tol) & (_axis_diff(link, ths[i]) <= tol)
                  & (_axis_diff(link, ths[js]) <= tol) & (gap <= max_gap) & on_line)
        for j in js[joined].tolist():
            parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in idx:
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def _join_rows(out: Table, group: list[int]) -> int:
    """A group's pieces joined into its first row (in place): the two ends farthest apart span the streak, the
    fluxes and pixel counts add up.  Returns how many pieces were joined to the first (``len(group) - 1``)."""
    if len(group) < 2:
        return 0
    first = group[0]
    ends = np.vstack([np.vstack(_ends(out["x"][i], out["y"][i], out["length"][i], out["theta"][i])) for i in group])
    d = np.hypot(ends[:, None, 0] - ends[None, :, 0], ends[:, None, 1] - ends[None, :, 1])
    a, b = np.unravel_index(np.argmax(d), d.shape)
    p, q = ends[a], ends[b]
    out["x"][first], out["y"][first] = 0.5 * (p + q)
    out["length"][first] = float(np.hypot(*(q - p)))
    out["theta"][first] = (math.atan2(q[1] - p[1], q[0] - p[0]) + math.pi / 2) % math.pi - math.pi / 2
    out["flux"][first] = float(np.sum(np.asarray(out["flux"])[group]))
    out["flux_err"][first] = float(np.sqrt(np.sum(np.asarray(out["flux_err"])[group] ** 2)))
    out["npix"][first] = int(np.sum(np.asarray(out["npix"])[group]))
    out["near_mask"][first] = bool(np.any(np.asarray(out["near_mask"])[group]))
    if "mask_fit" in out.colnames:
        out["mask_fit"][first] = False
    return len(group) - 1


#: A piece of a joined group detected at this S/N or more on its own is a source: when the group's fitted trail
#: leaves it out, it is measured alone (:func:`uncovered_pieces`).
COVER_MIN_SNR = 10.0


def uncovered_pieces(det: Table, group: list[int], fit, psf_sigma: float) -> list[int]:
    """The pieces of a joined group that its fitted trail leaves out: sources of their own.

    :func:`join_fragments` joins collinear pieces across up to ``max_gap``; short pieces' axes are uncertain, so a
    slow mover's 8 px trail can join a galaxy 26 px away 15 degrees off its axis, with a second galaxy on the line
    between them filling the gap (:func:`split_at_gaps` sees no gap).  The fit of the joined line then settles on
    the galaxy in the middle, 6 px long, and the mover was lost (a V 23.1 mover of an unseen family member in one of
    its four exposures).  A piece detected at :data:`COVER_MIN_SNR` or more on its own whose centre lies more than
    ``3 psf_sigma + 2`` px beyond the fitted trail's ends or beside its line is left out by the fit.

    Parameters
    ----------
    det : Table
        The detections before joining (``x, y, snr`` [px]).
    group : list of int
        Row indices of the joined pieces.
    fit : TrailFit
        The joined line's fit (``x, y, length, theta`` [px, rad]).
    psf_sigma : float
        [px].

    Returns
    -------
    list of int
        Row indices of the pieces left out (empty when the fit covers every bright piece, or for one piece).
    """
    if len(group) < 2:
        return []
    idx = np.asarray(group)
    dx = np.asarray(det["x"], float)[idx] - fit.x
    dy = np.asarray(det["y"], float)[idx] - fit.y
    c, s = math.cos(fit.theta), math.sin(fit.theta)
    margin = 3.0 * psf_sigma + 2.0
    outside = (np.abs(dx * c + dy * s) > 0.5 * fit.length + margin) | (np.abs(-dx * s + dy * c) > margin)
    bright = np.asarray(det["snr"], float)[idx] >= COVER_MIN_SNR
    return [int(i) for i in idx[outside & bright]]


#: A stretch between two joined pieces holding less than this fraction of the fainter piece's light per unit length,
#: and :data:`GAP_SIGMA` errors less, is empty: the pieces are two sources, not one trail.
GAP_FRACTION = 0.3
GAP_SIGMA = 4.0


def split_at_gaps(det: Table, group: list[int], data: np.ndarray, variance: np.ndarray, mask: np.ndarray,
                  psf_sigma: float, max_length: float = math.inf) -> list[list[int]]:
    """A group of :func:`join_fragments` split where the line between two consecutive pieces holds no light.

    Pieces of one trail are separated by masked pixels (cosmic-ray hits, bad columns) or, for a faint
    trail, by noise dips; between two bright pieces of different sources on one line the image is empty
    (a V 22 slow mover's 7 px trail was joined to a brighter source 19 px away, 19 degrees off its axis,
    and measured 10 px from where it was).  Along the line through two consecutive pieces' centres, the
    stretch between their facing ends (less ``2 s + 1`` px at each, ``s^2 = sigma^2 + 1/12``), when at least
    ``4 s + 1`` px long, is compared with the pieces' own light per unit length
    (:func:`~ssodetect.streaks.model.section_amplitudes`, masked pixels skipped): below :data:`GAP_FRACTION`
    of the fainter one's, by :data:`GAP_SIGMA` errors, it is a gap and the group is split there.  A stretch
    that is all masked is no gap.  A group spanning more than ``max_length`` (a satellite, perhaps flashing)
    stays whole.

    Parameters
    ----------
    det : Table
        Detections (``x, y, length, theta`` [px, rad]).
    group : list of int
        Row indices of the joined pieces.
    data, variance, mask : ndarray (ny, nx)
        Background-subtracted image [ADU], its variance [ADU^2], unusable pixels.
    psf_sigma : float
        [px].
    max_length : float
        Longest trail [px].

    Returns
    -------
    list of list of int
        The group's parts in order along the line (the group itself when nothing splits it).
    """
    if len(group) < 2:
        return [group]
    xs, ys = np.asarray(det["x"], float)[group], np.asarray(det["y"], float)[group]
    lens, ths = np.asarray(det["length"], float)[group], np.asarray(det["theta"], float)[group]
    # order along the group's principal axis
    pts = np.column_stack([xs, ys])
    _, _, vt = np.linalg.svd(pts - pts.mean(axis=0), full_matrices=False)
    along = (pts - pts.mean(axis=0)) @ vt[0]
    half = 0.5 * lens * np.abs(np.cos(ths - math.atan2(vt[0][1], vt[0][0])))
    if float(np.max(along + half) - np.min(along - half)) > max_length:
        return [group]
    order = np.argsort(along)
    s = math.sqrt(psf_sigma**2 + 1.0 / 12.0)
    margin, shortest = 2.0 * s + 1.0, 4.0 * s + 1.0
    parts, current = [], [group[int(order[0])]]
    for a, b in zip(order[:-1], order[1:]):
        a, b = int(a), int(b)
        dx, dy = xs[b] - xs[a], ys[b] - ys[a]
        dist = math.hypot(dx, dy)
        theta = math.atan2(dy, dx)
        # the facing ends along this line (each piece's half length projected on it)
        ha = 0.5 * lens[a] * abs(math.cos(ths[a] - theta))
        hb = 0.5 * lens[b] * abs(math.cos(ths[b] - theta))
        start, stop = ha + margin, dist - hb - margin
        if stop - start >= shortest:
            mid = 0.5 * (start + stop)
            gap, gap_err = section_amplitudes(data, variance, mask, xs[a] + mid * math.cos(theta),
                                              ys[a] + mid * math.sin(theta), stop - start, theta, psf_sigma)
            levels = [section_amplitudes(data, variance, mask, xs[k], ys[k], max(lens[k], 1.0), ths[k], psf_sigma)
                      for k in (a, b)]
            amp = np.array([lv[0][0] for lv in levels])
            err = np.array([lv[1][0] for lv in levels])
            if np.isfinite(gap[0]) and np.all(np.isfinite(amp)):
                k = int(np.argmin(amp))
                if gap[0] < GAP_FRACTION * amp[k] and amp[k] - gap[0] > GAP_SIGMA * math.hypot(gap_err[0], err[k]):
                    parts.append(current)
                    current = []
        current.append(group[b])
    parts.append(current)
    return parts


#: A piece shorter than ``min_length`` whose light per unit length exceeds this many times that of every other piece of
#: its group (by :data:`GAP_SIGMA` errors) is another source on the trail's line, not a piece of it.
DETACH_RATIO = 3.0


def detach_bright_pieces(det: Table, group: list[int], data: np.ndarray, variance: np.ndarray, mask: np.ndarray,
                         psf_sigma: float, min_length: float) -> list[list[int]]:
    """The short pieces of a joined group that are far brighter per unit length than the rest, taken out of it.

    The pieces of one trail share its light per unit length (the object's flux over its rate).  A slow mover's short
    trail that happens to lie on a fast mover's line (directions cluster along the ecliptic) is joined to it by
    :func:`join_fragments` when it overlaps the trail or lies within ``max_gap``, and no gap separates them: with 60
    fast movers per 2048^2 CCD, one family member lost a V 22.1 slow mover so (its 7.8 px trail of 428 ADU/px joined
    to a 20 px piece of 26 ADU/px and measured 15 px away; two more were lost inside a fast trail's own footprint,
    which this does not undo).  A piece shorter than ``min_length`` whose amplitude
    (:func:`~ssodetect.streaks.model.section_amplitudes`) is more than :data:`DETACH_RATIO` times every other
    piece's, by :data:`GAP_SIGMA` errors, becomes a group of its own; the rest stays joined.

    Parameters
    ----------
    det, group, data, variance, mask, psf_sigma
        As for :func:`split_at_gaps`.
    min_length : float
        Pieces at least this long [px] are never detached.

    Returns
    -------
    list of list of int
        The group (less the detached pieces) and each detached piece alone; the group itself when none is.
    """
    if len(group) < 2:
        return [group]
    lens = np.asarray(det["length"], float)
    amp, err = np.full(len(group), np.nan), np.full(len(group), np.nan)
    for k, i in enumerate(group):
        a, e = section_amplitudes(data, variance, mask, float(det["x"][i]), float(det["y"][i]), max(lens[i], 1.0),
                                  float(det["theta"][i]), psf_sigma)
        amp[k], err[k] = a[0], e[0]
    detached = []
    for k, i in enumerate(group):
        others = [j for j in range(len(group)) if j != k and np.isfinite(amp[j])]
        if lens[i] >= min_length or not np.isfinite(amp[k]) or not others:
            continue
        top = max(others, key=lambda j: amp[j])
        if amp[k] > DETACH_RATIO * amp[top] and amp[k] - DETACH_RATIO * amp[top] > GAP_SIGMA * math.hypot(
                err[k], DETACH_RATIO * err[top]):
            detached.append(i)
    if not detached or len(detached) == len(group):
        return [group]
    return [[i for i in group if i not in detached]] + [[i] for i in detached]


def collinear_chains(
    x: np.ndarray,
    y: np.ndarray,
    *,
    band: float = 1.5,
    max_gap: float = 40.0,
    min_points: int = 5,
    min_span: float = 30.0,
) -> list[np.ndarray]:
    """Runs of points lying on straight lines (indices into ``x, y``).

    A Hough transform of the points (1 deg by ``2 band`` px cells) proposes lines
    with at least ``min_points`` votes; the points within ``band`` of each line
    (refined by a principal-axis fit) are split into runs wherever two
    consecutive points are more than ``max_gap`` apart; runs with at least
    ``min_points`` points spanning ``min_span`` px are returned, each point in
    at most one run.  Random alignments of that many points with such small gaps
    are rare at the densities of faint detections (~1e-3 per px^2).

    The same runs, in the same order, as :func:`_collinear_chains_reference` (its numpy twin): the numba kernels of
    :mod:`ssodetect.streaks._chains` count the votes and pass over the cells that yield no run, each on the points of
    a few cells (the reference looks at every point for each of the ~1e5 cells of a 2048^2 CCD with 4000 faint
    detections); the cells that may yield runs are measured here as the reference measures them (its SVD).
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    n = x.size
    if n < min_points:
        return []
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return _collinear_chains_reference(x, y, band=band, max_gap=max_gap, min_points=min_points,
                                           min_span=min_span)
    angles = np.radians(np.arange(0.0, 180.0, 1.0))
    cos_h, sin_h = np.cos(angles), np.sin(angles)  # the reference's rho
    counts, start, idx, offset, n_bins = hough_cells(x, y, cos_h, sin_h, 2.0 * band)
    cells = np.nonzero(counts >= min_points)[0]
    cells = cells[np.argsort(-counts[cells])]
    cos_r = np.array([math.cos(t) for t in angles])  # the reference's first line normals
    sin_r = np.array([math.sin(t) for t in angles])
    scale = float(np.max(np.abs(x)) + np.max(np.abs(y)))
    par = np.array([offset, 2.0 * band, band, max_gap, min_span, scale, x.min(), x.max(), y.min(), y.max(),
                    math.ceil(min_points)], np.float64)
    used = np.zeros(n, bool)
    m1, m2 = np.empty(n, np.int64), np.empty(n, np.int64)
    runs = []
    pos = 0
    while True:
        pos, n1, n2, m2_exact = next_cell(x, y, used, cells, pos, n_bins, cos_h, sin_h, cos_r, sin_r, start, idx,
                                          par, m1, m2)
        if pos >= cells.size:
            return runs
        pos += 1
        if m2_exact:  # the reference's points after its second refinement
            members = m2[:n2].copy()
        else:  # its second refinement (on the points near the line) from its points after the first
            members = m1[:n1].copy()
            pts = np.column_stack([x[members], y[members]])
            centred = pts - pts.mean(axis=0)
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            direction = vt[0]
            theta = math.atan2(direction[1], direction[0]) + math.pi / 2
            nx_, ny_ = math.cos(theta), math.sin(theta)
            r0 = float(np.median(x[members] * nx_ + y[members] * ny_))
            near = line_candidates(nx_, ny_, r0, band, cos_h, sin_h, start, idx, par, n_bins)
            dist = np.abs(x[near] * nx_ + y[near] * ny_ - r0)
            members = near[(dist <= band) & ~used[near]]
            if members.size < min_points:
                continue
        pts = np.column_stack([x[members], y[members]])
        centred = pts - pts.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        direction = vt[0]
        theta = math.atan2(direction[1], direction[0]) + math.pi / 2
        along = -x[members] * math.sin(theta) + y[members] * math.cos(theta)
        order = np.argsort(along)
        members, along = members[order], along[order]
        ends = [0, *(np.nonzero(np.diff(along) > max_gap)[0] + 1).tolist(), members.size]
        for lo, hi in zip(ends[:-1], ends[1:]):
            if hi - lo >= min_points and along[hi - 1] - along[lo] >= min_span:
                runs.append(members[lo:hi].copy())
                used[runs[-1]] = True


def _collinear_chains_reference(
    x: np.ndarray,
    y: np.ndarray,
    *,
    band: float = 1.5,
    max_gap: float = 40.0,
    min_points: int = 5,
    min_span: float = 30.0,
) -> list[np.ndarray]:
    """Numpy reference of :func:`collinear_chains` (same arguments and result): every Hough cell against all points."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = x.size
    if n < min_points:
        return []
    angles = np.radians(np.arange(0.0, 180.0, 1.0))
    rho = x[None, :] * np.cos(angles)[:, None] + y[None, :] * np.sin(angles)[:, None]  # (n_angle, n)
    width = 2.0 * band
    offset = rho.min()
    bins = np.floor((rho - offset) / width).astype(np.int64)
    n_bins = int(bins.max()) + 1
    flat = bins + np.arange(angles.size)[:, None] * n_bins
    counts = np.bincount(flat.ravel(), minlength=angles.size * n_bins)
    cells = np.nonzero(counts >= min_points)[0]
    cells = cells[np.argsort(-counts[cells])]
    used = np.zeros(n, bool)
    runs = []
    for cell in cells:
        a_i, b_i = divmod(int(cell), n_bins)
        members = np.nonzero((bins[a_i] == b_i) & ~used)[0]
        if members.size < min_points:
            continue
        theta = angles[a_i]
        for _ in range(2):  # refine the line on its points, then collect again
            nx_, ny_ = math.cos(theta), math.sin(theta)
            r0 = float(np.median(x[members] * nx_ + y[members] * ny_))
            dist = np.abs(x * nx_ + y * ny_ - r0)
            members = np.nonzero((dist <= band) & ~used)[0]
            if members.size < min_points:
                break
            pts = np.column_stack([x[members], y[members]])
            centred = pts - pts.mean(axis=0)
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            direction = vt[0]
            theta = math.atan2(direction[1], direction[0]) + math.pi / 2  # normal of the principal axis
        if members.size < min_points:
            continue
        along = -x[members] * math.sin(theta) + y[members] * math.cos(theta)
        order = np.argsort(along)
        members, along = members[order], along[order]
        breaks = np.nonzero(np.diff(along) > max_gap)[0] + 1
        for run in np.split(np.arange(members.size), breaks):
            if run.size >= min_points and along[run[-1]] - along[run[0]] >= min_span:
                runs.append(members[run])
                used[members[run]] = True
    return runs


def _add_chain_trails(det, data, variance, mask, psf_sigma, min_length):
    """Faint trails found as chains of small detections, verified by a trailed-PSF fit."""
    kind = np.asarray(det["kind"])
    faint = np.isin(kind, ["point", "trail", "extended"]) & (np.asarray(det["snr"], float) < 30.0)
    faint &= np.asarray(det["length"], float) < 3.0 * min_length
    idx = np.nonzero(faint)[0]
    if idx.size < 5:
        return det, 0
    chains = collinear_chains(np.asarray(det["x"], float)[idx], np.asarray(det["y"], float)[idx])
    new_rows, drop = [], []
    for chain in chains:
        members = idx[chain]
        px, py = np.asarray(det["x"], float)[members], np.asarray(det["y"], float)[members]
        pts = np.column_stack([px, py])
        centre = pts.mean(axis=0)
        _, _, vt = np.linalg.svd(pts - centre, full_matrices=False)
        theta = math.atan2(vt[0][1], vt[0][0])
        t = (pts - centre) @ vt[0]
        span = float(t.max() - t.min())
        mid = centre + 0.5 * (t.max() + t.min()) * vt[0]
        fit = fit_trail(data, variance, mask, float(mid[0]), float(mid[1]), span + 2.0, theta, psf_sigma)
        if not (fit.success and fit.flux > 7.0 * fit.flux_err and abs(fit.length - span) < 0.3 * span + 8.0
                and math.hypot(fit.x - mid[0], fit.y - mid[1]) < 0.2 * span + 3.0
                and max(fit.x_err, fit.y_err) < 0.1 * fit.length + 1.0):
            continue
        new_rows.append(_trail_row(det, members, fit, psf_sigma))
        drop.extend(members.tolist())
    return _replace_pieces(det, drop, new_rows), len(new_rows)


def _trail_row(det: Table, members: np.ndarray, fit, psf_sigma: float) -> dict:
    """A detection row for a trail measured by ``fit`` that replaces the pieces ``members`` of ``det``."""
    template = int(members[0]) if len(members) else 0
    row = {name: det[name][template] for name in det.colnames}
    row.update(
        x=fit.x, y=fit.y, length=fit.length, theta=fit.theta, x_err=max(fit.x_err, 1e-3), y_err=max(fit.y_err, 1e-3),
        flux=fit.flux, flux_err=fit.flux_err, snr=fit.flux / fit.flux_err, kind="trail",
        a=0.5 * fit.length / math.sqrt(3.0), b=psf_sigma, npix=int(np.sum(np.asarray(det["npix"])[members])),
        near_mask=bool(np.any(np.asarray(det["near_mask"])[members])), sep_flag=0, peak=float("nan"), cut=0,
        chi2_psf=float("nan"), chi2_sharp=float("nan"), chi2_broad=float("nan"), length_err=fit.length_err,
        theta_err=fit.theta_err,
    )
    if "mask_fit" in row:
        row["mask_fit"] = False
    # a trail fit is neither a point PSF fit at the edge nor measured by a point's core (with no pieces, as from the
    # line filter, the template row is an unrelated detection)
    if "edge_fit" in row:
        row["edge_fit"] = False
    if "masked_core" in row:
        row["masked_core"] = float(np.max(np.asarray(det["masked_core"], float)[members])) if len(members) else 0.0
    return row


def _replace_pieces(det: Table, drop, new_rows: list[dict]) -> Table:
    """``det`` without the rows ``drop`` and with ``new_rows`` appended (``det`` itself when nothing changes)."""
    if not new_rows:
        return det
    out = det.copy()
    if len(drop):
        out.remove_rows(sorted(set(drop)))
    for row in new_rows:
        out.add_row([row[name] for name in out.colnames])
    return out


#: Shortest faint line sought by :func:`smoothed_segments` [px].
MIN_LINE = 50.0


def smoothed_segments(snr: np.ndarray, *, smooth: float = 2.0, threshold: float = 2.5, min_length: float = MIN_LINE,
                      min_elongation: float = 8.0, min_pixels: int = 60, binning: int = 2) -> list[tuple[float, float, float, float]]:
    """Long thin regions of a smoothed signal-to-noise image (faint trails below the extraction limit).

    Parameters
    ----------
    snr : ndarray (ny, nx)
        Signal-to-noise per pixel, masked pixels set to 0 and bright sources clipped.
    smooth : float
        Gaussian smoothing sigma [px]: a trail's S/N per pixel grows by ~sqrt(2 sqrt(pi) smooth) along it.
    threshold : float
        Threshold on the smoothed image, in units of its own noise.
    min_length, min_elongation, min_pixels : float, float, int
        A region must be at least this long [px], this many times longer than wide, and this large [px].
    binning : int
        The image is summed in ``binning`` x ``binning`` blocks first (S/N kept per block) and smoothed by
        ``smooth / binning`` blocks: the same smoothing scale on 4x fewer pixels (the trails sought are
        >= ``min_length`` px long and are verified by a fit on the full-resolution pixels).

    Returns
    -------
    list of (x, y, length, theta)
        Centre [px], length [px] and angle [rad] of each region, from its second moments.
    """
    from scipy import ndimage

    b = max(int(binning), 1)
    nyb, nxb = snr.shape[0] // b, snr.shape[1] // b
    blocks = np.zeros((nyb, nxb), np.float32)
    for i in range(b):  # block sums from b^2 strided views (a reshape-and-sum copies the image first)
        for j in range(b):
            blocks += snr[i : nyb * b : b, j : nxb * b : b]
    blocks /= b  # unit noise
    scale = smooth / b
    smoothed = ndimage.gaussian_filter(blocks, scale)
    smoothed /= 1.0 / (2.0 * math.sqrt(math.pi) * scale)  # noise of smoothed unit white noise
    labels, n = ndimage.label(smoothed > threshold, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    large = sizes >= max(min_pixels // (b * b), 1)
    # the block centres [px] of the large regions only (most regions are noise a few blocks wide)
    ys, xs = np.nonzero(large[labels])
    if ys.size == 0:
        return []
    lab = labels[ys, xs]
    order = np.argsort(lab, kind="stable")
    lab, ys, xs = lab[order], ys[order] * b + 0.5 * (b - 1), xs[order] * b + 0.5 * (b - 1)
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    out = []
    for k, start in enumerate(starts):
        stop = starts[k + 1] if k + 1 < starts.size else lab.size
        rx, ry = xs[start:stop], ys[start:stop]
        # the rms along any axis is at most half the points' extent (x N/(N-1) <= 1.02 for the sample
        # covariance): a region whose bounding box is too small cannot reach min_length
        if 1.8 * math.hypot(rx.max() - rx.min() + b, ry.max() - ry.min() + b) < min_length:
            continue
        cx, cy = rx.mean(), ry.mean()
        evals, evecs = np.linalg.eigh(np.cov(np.vstack([rx - cx, ry - cy])))
        length = math.sqrt(12.0 * max(evals[1], 0.0))
        width = math.sqrt(max(evals[0], 1e-6))
        if length >= min_length and length >= min_elongation * width:
            out.append((float(cx), float(cy), length, math.atan2(evecs[1, 1], evecs[0, 1])))
    return out


#: Line-filter search (:func:`line_segments`): block size [px], half-length of the line kernel [blocks], number
#: of angles over 180 deg, threshold on the filtered image for a region's peak and for its extent [its robust sigma].
LINE_BINNING = 4
LINE_HALF_LENGTH = 4
LINE_ANGLES = 24
LINE_THRESHOLD = 4.5
LINE_GROW = 2.5
#: A region's peak is a line's only where the same kernel across the direction sums to at most this share of it.
LINE_MAX_ACROSS = 0.5


def line_segments(snr: np.ndarray, *, binning: int = LINE_BINNING, half_length: int = LINE_HALF_LENGTH,
                  n_angles: int = LINE_ANGLES, threshold: float = LINE_THRESHOLD, grow: float = LINE_GROW,
                  min_length: float = MIN_LINE) -> list[tuple[float, float, float, float, float]]:
    """Long faint trails from a matched line filter: a trail too faint per PSF for the extraction
    (V 23.4 at 70"/h on Euclid VIS: 110 px long, S/N ~1 per pixel on its axis, ~15 in all) adds up along
    its own direction.

    The S/N image is summed in ``binning`` x ``binning`` blocks; for each of ``n_angles`` directions
    the blocks are summed along a line of ``2 half_length + 1`` steps (one block per step along the
    major axis), and the result is divided by its own robust sigma.  Connected regions above ``grow``
    that peak above ``threshold`` are kept when, less the kernel's span, they are at least ``min_length``
    long along the filter's direction (a round source gives a region the kernel's span longer than
    itself; the filtered noise is correlated over that span too) and when the kernel turned across the
    direction sums to at most :data:`LINE_MAX_ACROSS` of the peak there (a round source is as bright
    across).

    Parameters
    ----------
    snr : ndarray (ny, nx)
        Signal-to-noise per pixel; masked pixels and bright sources set to 0, the rest clipped.
    binning, half_length, n_angles, threshold, grow, min_length
        See above; ``min_length`` [px].

    Returns
    -------
    list of (x, y, length, theta, peak)
        Centre [px], length [px] (the region's extent less the kernel's span), the direction [rad, from
        +x towards +y] and the region's highest filtered value [sigma], brightest first.  One trail can give
        regions at neighbouring angles.
    """
    from scipy import ndimage

    b = max(int(binning), 1)
    nyb, nxb = snr.shape[0] // b, snr.shape[1] // b
    blocks = np.zeros((nyb, nxb), np.float32)
    for i in range(b):
        for j in range(b):
            blocks += snr[i : nyb * b : b, j : nxb * b : b]
    blocks /= b
    out = []
    structure = np.ones((3, 3), bool)
    for a in range(n_angles):
        theta = math.pi * a / n_angles
        c, s = math.cos(theta), math.sin(theta)
        major = max(abs(c), abs(s))
        acc = np.zeros_like(blocks)
        for k in range(-half_length, half_length + 1):
            dx, dy = int(round(k * c / major)), int(round(k * s / major))
            # acc[y, x] += blocks[y + dy, x + dx] (zero beyond the image)
            ys0, ys1 = max(0, -dy), min(nyb, nyb - dy)
            xs0, xs1 = max(0, -dx), min(nxb, nxb - dx)
            if ys1 > ys0 and xs1 > xs0:
                acc[ys0:ys1, xs0:xs1] += blocks[ys0 + dy:ys1 + dy, xs0 + dx:xs1 + dx]
        # (the noise over data: where blanked sources and masks zeroed the kernel's whole reach, acc is exactly 0)
        sample = acc[::3, ::3]
        sample = sample[sample != 0.0]
        if sample.size < 100:
            continue
        scale = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))
        if not scale > 0:
            continue
        acc /= scale
        above = acc > threshold
        if not above.any():
            continue
        labels, n = ndimage.label(acc > grow, structure=structure)
        # only the regions that peak above the threshold (most regions above ``grow`` are noise): relabelled
        # so that the per-region scans below cost their number, not the noise regions'
        labels = np.where(np.isin(labels, np.unique(labels[above])), labels, 0)
        labels, n = ndimage.label(labels > 0, structure=structure)
        span = 2.0 * half_length / major  # kernel span [blocks]
        # the kernel across the direction, for the test of each region's peak
        pc, ps = -s, c
        pmajor = max(abs(pc), abs(ps))
        across_steps = [(int(round(k * pc / pmajor)), int(round(k * ps / pmajor)))
                        for k in range(-half_length, half_length + 1)]
        for k, region in enumerate(ndimage.find_objects(labels), start=1):
            if region is None:
                continue
            ys, xs = np.nonzero(labels[region] == k)
            ys = ys + region[0].start
            xs = xs + region[1].start
            peak = float(acc[ys, xs].max())
            # a line is faint across its direction; a round source (a galaxy, a star's halo) is as bright across
            # (it gives regions at every angle)
            top = int(np.argmax(acc[ys, xs]))
            jy, ix = int(ys[top]), int(xs[top])
            across = sum(float(blocks[jy + dy, ix + dx]) for dx, dy in across_steps
                         if 0 <= jy + dy < nyb and 0 <= ix + dx < nxb) / scale
            if across > LINE_MAX_ACROSS * peak:
                continue
            u = xs * c + ys * s
            along = float(u.max() - u.min() + 1.0) - span
            if along * b < min_length:
                continue
            weights = acc[ys, xs]
            cx = float(np.average(xs, weights=weights)) * b + 0.5 * (b - 1)
            cy = float(np.average(ys, weights=weights)) * b + 0.5 * (b - 1)
            out.append((cx, cy, along * b, theta if theta <= math.pi / 2 else theta - math.pi, peak))
    out.sort(key=lambda seg: -seg[4])
    return out


@dataclass(frozen=True)
class _Segment:
    """A line segment: centre [px], length [px], angle [rad]."""

    x: float
    y: float
    length: float
    theta: float


def _on_segment(x: float, y: float, fit, *, width: float = 4.0) -> bool:
    """Whether ``(x, y)`` [px] lies on the fitted trail ``fit`` (within ``width`` px of its line, between its ends)."""
    c, s = math.cos(fit.theta), math.sin(fit.theta)
    u = (x - fit.x) * c + (y - fit.y) * s
    w = -(x - fit.x) * s + (y - fit.y) * c
    return abs(u) <= 0.5 * fit.length + width and abs(w) <= width


#: Sources at or above this S/N (not cosmic rays) are blanked before the line filter (:func:`line_segments`).
LINE_SOURCE_SNR = 10.0
#: Line-filter regions peaking above this [sigma] are not fitted: a trail that bright (~3 per pixel on its axis)
#: is extracted by the PSF-matched filter already.
LINE_MAX_PEAK = 20.0


def _blank_sources(snr: np.ndarray, det: Table, psf_sigma: float) -> np.ndarray:
    """``snr`` with the bright detections of ``det`` (S/N >= :data:`LINE_SOURCE_SNR`, not ``sharp``) set to 0:
    boxes around point and extended sources, and along trails and streaks (a satellite's or a spike's line
    would fill a line filter's kernel at every angle near its own)."""
    out = snr.copy()
    ny, nx = out.shape
    kinds = np.asarray(det["kind"])
    bright = np.nonzero((np.asarray(det["snr"], float) >= LINE_SOURCE_SNR) & (kinds != "sharp"))[0]
    for k in bright:
        x, y, length = float(det["x"][k]), float(det["y"][k]), float(det["length"][k])
        if kinds[k] in ("point", "extended"):
            size = max(float(det["a"][k]), psf_sigma)
            centres = [(x, y)]
            half = int(math.ceil(min(0.5 * length + 3.0 * size + 2.0, 25.0)))
        else:
            half = int(math.ceil(3.0 * max(float(det["b"][k]), psf_sigma) + 2.0))
            n = max(int(math.ceil(length / half)) + 1, 2)
            t = np.linspace(-0.5 * length, 0.5 * length, n)
            theta = float(det["theta"][k])
            centres = list(zip(x + t * math.cos(theta), y + t * math.sin(theta)))
        for cx, cy in centres:
            i, j = int(round(cx)), int(round(cy))
            out[max(j - half, 0):min(j + half + 1, ny), max(i - half, 0):min(i + half + 1, nx)] = 0.0
    return out


def _add_smoothed_trails(det, data, variance, mask, psf_sigma, max_length):
    """Faint long trails from :func:`smoothed_segments` and :func:`line_segments` (bright sources blanked),
    verified by a trailed-PSF fit; pieces on them removed.  Returns ``(det, n_smoothed, counts)``: the trails
    found on the smoothed image, and the line filter's ``n_line_regions`` (its regions), of which
    ``n_line_too_bright`` (above :data:`LINE_MAX_PEAK`), ``n_line_too_long`` (beyond ``max_length``) and
    ``n_line_known`` (on a trail already measured or already tried) are not fitted and ``n_line_fitted`` are
    (fits tried), and ``n_line_filter`` (trails kept)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = data / np.sqrt(variance)
    snr[mask | ~(variance > 0) | ~np.isfinite(snr)] = 0.0
    np.clip(snr, -3.0, 4.0, out=snr)  # bright sources must not dominate the smoothing
    segments = smoothed_segments(snr)
    xs, ys = np.asarray(det["x"], float), np.asarray(det["y"], float)
    lens, kinds = np.asarray(det["length"], float), np.asarray(det["kind"])
    snrs = np.asarray(det["snr"], float)
    new_rows: list[dict] = []
    drop: set[int] = set()
    fits: list = []

    def measured(cx, cy, length):
        """Already measured as a trail (or a bright streak) of similar length?"""
        distance = np.hypot(xs - cx, ys - cy)
        return bool(np.any(np.isin(kinds, ("trail", "streak")) & (lens > 0.5 * length) & (distance < 0.25 * length + 5)))

    def add(fit):
        # faint pieces lying on the fitted segment belong to it
        c, s = math.cos(fit.theta), math.sin(fit.theta)
        u = (xs - fit.x) * c + (ys - fit.y) * s
        w = -(xs - fit.x) * s + (ys - fit.y) * c
        on = (np.abs(u) <= 0.5 * fit.length + 3) & (np.abs(w) <= 3.0) & (snrs < 30.0)
        members = np.nonzero(on)[0]
        new_rows.append(_trail_row(det, members, fit, psf_sigma))
        drop.update(members.tolist())
        fits.append(fit)

    for cx, cy, length, theta in segments:
        if length > max_length or measured(cx, cy, length):
            continue
        # short and centred on a bright source (not a cosmic-ray hit): the smoothed wings of a bright galaxy or
        # star, whose fit collapses onto the source and is refused below (~14 of 16 regions on a 4k Euclid-like
        # CCD image); long regions are fitted whatever lies near their middle
        distance = np.hypot(xs - cx, ys - cy)
        if length < 2.0 * MIN_LINE and np.any((snrs >= 30.0) & (kinds != "sharp") & (distance < 0.1 * length + 10.0)):
            continue
        # the thresholded region may cover only part of the trail: start longer, allow it to grow
        fit = fit_trail(data, variance, mask, cx, cy, 1.3 * length, theta, psf_sigma)
        if not (fit.success and fit.flux > 7.0 * fit.flux_err and 0.7 * length < fit.length < 2.0 * length + 10.0
                and math.hypot(fit.x - cx, fit.y - cy) < 0.6 * length + 3.0
                and max(fit.x_err, fit.y_err) < 0.1 * fit.length + 1.0 and fit.length <= max_length):
            continue
        add(fit)
    n_smoothed = len(new_rows)
    # the line filter: trails too faint per pixel for the smoothing, along their own direction
    tried: list = []  # the regions already fitted (one line gives regions at neighbouring angles)
    regions = line_segments(_blank_sources(snr, det, psf_sigma))
    # a line that bright is extracted (S/N ~3 per pixel on its axis): what is left of it here is the rest of a
    # source the blanking did not cover (a spike's far part, a halo)
    counts = {"n_line_regions": len(regions), "n_line_too_bright": 0, "n_line_too_long": 0, "n_line_known": 0}
    for cx, cy, length, theta, peak in regions:
        if peak > LINE_MAX_PEAK:
            counts["n_line_too_bright"] += 1
            continue
        if length > max_length:
            counts["n_line_too_long"] += 1
            continue
        if measured(cx, cy, length) or any(
                _on_segment(cx, cy, f) and abs(_axis_diff(theta, f.theta)) < math.radians(15.0) for f in fits + tried):
            counts["n_line_known"] += 1
            continue
        tried.append(_Segment(cx, cy, length, theta))
        # the region's length less the kernel's span may miss the trail's faint ends, or reach beyond them: a fit
        # at S/N ~8 stays near its start (from 30 % longer it can lose the trail altogether)
        fit = None
        for start in (length, 1.3 * length):
            trial = fit_trail(data, variance, mask, cx, cy, start, theta, psf_sigma)
            if (trial.success and trial.flux > 7.0 * trial.flux_err
                    and MIN_LINE <= trial.length <= min(max_length, 2.0 * length + 20.0)
                    and math.hypot(trial.x - cx, trial.y - cy) < 0.5 * length + 5.0
                    and abs(_axis_diff(trial.theta, theta)) < math.radians(15.0)
                    and max(trial.x_err, trial.y_err) < 0.1 * trial.length + 1.0):
                fit = trial
                break
        if fit is None:
            continue
        if measured(fit.x, fit.y, fit.length) or any(
                _on_segment(fit.x, fit.y, f) and abs(_axis_diff(fit.theta, f.theta)) < math.radians(10.0) for f in fits):
            continue
        add(fit)
    counts.update(n_line_fitted=len(tried), n_line_filter=len(new_rows) - n_smoothed)
    return _replace_pieces(det, sorted(drop), new_rows), n_smoothed, counts


def refine_trails(
    det: Table,
    data: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    saturated: np.ndarray | None,
    psf_sigma: float,
    *,
    min_length: float,
    max_length: float,
    max_gap: float = 30.0,
    max_angle: float = math.radians(4.0),
) -> tuple[Table, dict]:
    """Join trail fragments, fit every trail, label satellites and bleeds.

    Parameters
    ----------
    det : Table
        Detections of :func:`ssodetect.detect.extract_sources` (columns ``x, y,
        length, theta, kind, flux, ...``).
    data, variance, mask : ndarray (ny, nx)
        Background-subtracted image [ADU], its variance [ADU^2], bad pixels.
    saturated : ndarray (ny, nx) bool or None
        Saturated pixels (bleed columns start there).
    psf_sigma : float
        [px].
    min_length, max_length : float
        Trails shorter than ``min_length`` keep their extraction measurement;
        longer than ``max_length`` are satellites [px].

    Returns
    -------
    Table
        The detections with joined fragments replaced by one row each and
        trails re-measured (``kind`` ``trail``, ``satellite``, ``bleed``, ``spike``, ``edge`` or ``blend``: a long
        footprint whose light lies in patches, :func:`label_patchy_trails`).
    dict
        Counts: ``n_chains`` (faint trails built from chains of blobs), ``n_faint_lines`` (faint long trails
        found on the smoothed image or by the line filter) of which ``n_line_filter`` by the line filter
        (:func:`line_segments`; ``n_line_regions`` regions, ``n_line_too_bright``, ``n_line_too_long`` and
        ``n_line_known`` of them not fitted, fits tried on ``n_line_fitted``), ``n_joined``, ``n_unjoined`` (joined
        groups whose fit left bright pieces out, split again: :func:`uncovered_pieces`), ``n_gaps_split`` (joins
        undone where the line between two pieces was empty: :func:`split_at_gaps`), ``n_detached`` (short pieces
        far brighter per unit length than the rest taken out of their group: :func:`detach_bright_pieces`),
        ``n_fitted``, ``n_satellite``, ``n_bleed``, ``n_spike``, ``n_edge``, ``n_short_refit`` (short trails
        re-measured by the trail fit: :func:`_refit_short_trails`), ``n_ends_moved`` (fits moved to the ends
        of the segment of highest S/N along their axis: :func:`_settle_ends`), ``spike_axes`` (the image's
        spike angles [deg], :func:`spike_axes`), ``n_spike_rejected`` (lines pointing at a saturated core
        along none of them: measured as trails) and ``n_unmirrored`` (lines pointing at a saturated core without
        the twin on its other side that a spike has, :func:`_unmirrored`: measured as trails), ``n_patchy``
        (labelled ``blend``).
    """
    info = {"n_joined": 0, "n_unjoined": 0, "n_fitted": 0, "n_satellite": 0, "n_bleed": 0, "n_spike": 0, "n_edge": 0,
            "n_chains": 0, "n_faint_lines": 0, "n_line_filter": 0, "n_line_regions": 0, "n_line_too_bright": 0, "n_line_too_long": 0,
            "n_line_known": 0, "n_line_fitted": 0,
            "n_gaps_split": 0, "n_detached": 0, "n_ends_moved": 0, "n_spike_rejected": 0, "n_unmirrored": 0,
            "spike_axes": []}
    if len(det) == 0:
        return det, info
    det, info["n_chains"] = _add_chain_trails(det, data, variance, mask, psf_sigma, min_length)
    det, n_smoothed, line_counts = _add_smoothed_trails(det, data, variance, mask, psf_sigma, max_length)
    info.update(line_counts)
    info["n_faint_lines"] = n_smoothed + info["n_line_filter"]
    kind = np.asarray(det["kind"])
    elongated = np.isin(kind, ["trail", "streak"]) & (np.asarray(det["length"], float) >= 0.5 * min_length)
    groups = join_fragments(det, elongated, max_gap=max_gap, max_angle=max_angle)
    n_groups = len(groups)
    groups = [part for group in groups
              for part in split_at_gaps(det, group, data, variance, mask, psf_sigma, max_length)]
    info["n_gaps_split"] = len(groups) - n_groups
    n_groups = len(groups)
    groups = [part for group in groups
              for part in detach_bright_pieces(det, group, data, variance, mask, psf_sigma, min_length)]
    info["n_detached"] = len(groups) - n_groups
    out = det.copy()
    dropped: set[int] = set()
    noise = float(np.sqrt(np.nanmedian(variance[::8, ::8])))  # a smooth map: every 64th pixel is plenty
    saturated_points = np.argwhere(saturated) if saturated is not None else None
    for group in groups:  # 1. fragments joined
        info["n_joined"] += _join_rows(out, group)
        dropped.update(group[1:])

    def near_core_of(first: int) -> bool:
        """The line, extended, runs into a saturated core (no gap on the way), and is not a bleed column."""
        if saturated is None:
            return False
        length, theta = float(out["length"][first]), float(out["theta"][first])
        bleed = abs(abs(theta) - math.pi / 2) < math.radians(2.0) and _touches(
            saturated, out["x"][first], out["y"][first], length, theta, points=saturated_points)
        reach = max(1.5 * length, 40.0)
        return bool(not bleed and 0.5 * min_length <= length <= max_length and _touches(
            saturated, out["x"][first], out["y"][first], length, theta, reach=reach, band=3,
            points=saturated_points,
        ) and not _gap_to_core(data, variance, mask, saturated_points, float(out["x"][first]),
                               float(out["y"][first]), length, theta, psf_sigma, reach)
            and not unmirrored(first, length, theta, reach))

    def unmirrored(first: int, length: float, theta: float, reach: float) -> bool:
        """The line lacks a spike's twin (:func:`_unmirrored`); counted in ``n_unmirrored``."""
        lonely = _unmirrored(data, variance, mask, saturated, saturated_points, float(out["x"][first]),
                             float(out["y"][first]), length, theta, psf_sigma, reach)
        info["n_unmirrored"] += int(lonely)
        return lonely

    # 2. diffraction spikes: a line that, extended, runs into a saturated core AND lies along one of the image's
    # spike axes (every saturated star's spikes share their angles on the detector; a mover passing near a
    # saturated star at another angle is not a spike, and an image without spikes has no such axis: on a
    # crowded member without spikes 137 movers and galaxies had been labelled spikes)
    near_core = {int(group[0]): near_core_of(int(group[0])) for group in groups}
    # too few such lines to tell the axes from chance (a frame with one or two saturated stars): all are spikes (the
    # lines without a twin count among them: they point at cores too, and dropping them must not turn the test off)
    judged = sum(near_core.values()) + info["n_unmirrored"] >= MIN_SPIKE_LINES
    axes = (spike_axes(np.degrees([float(out["theta"][f]) for f, near in near_core.items() if near]))
            if judged else np.zeros(0))
    info["spike_axes"] = [round(float(a), 1) for a in axes]
    work = list(reversed(groups))
    while work:  # 3. classified and measured
        group = work.pop()
        first = group[0]
        length = float(out["length"][first])
        if length > max_length:
            out["kind"][first] = "satellite"
            info["n_satellite"] += 1
            continue
        theta = float(out["theta"][first])
        if saturated is not None and abs(abs(theta) - math.pi / 2) < math.radians(2.0) and _touches(
            saturated, out["x"][first], out["y"][first], length, theta, points=saturated_points
        ):
            out["kind"][first] = "bleed"
            info["n_bleed"] += 1
            continue
        if near_core[first] and (not judged or _on_axis(math.degrees(theta), length, axes)):
            out["kind"][first] = "spike"
            info["n_spike"] += 1
            continue
        if length < min_length:
            info["n_spike_rejected"] += int(near_core[first])
            continue
        if _along_edge(data.shape, float(out["x"][first]), float(out["y"][first]), theta, 3.0 * psf_sigma + 2.0):
            info["n_spike_rejected"] += int(near_core[first])
            out["kind"][first] = "edge"  # a source cut by the detector edge looks elongated along it
            info["n_edge"] += 1
            continue
        out["kind"][first] = "trail"  # a streak segment of SSO-like length, whether or not the fit below succeeds
        out["cut"][first] = cut_ends(data.shape, float(out["x"][first]), float(out["y"][first]), length, theta,
                                     3.0 * psf_sigma + 2.0)
        x0, y0 = float(out["x"][first]), float(out["y"][first])
        h = 0.5 * length
        box = (int(max(x0 - abs(h * math.cos(theta)) - 4, 0)), int(min(x0 + abs(h * math.cos(theta)) + 5, data.shape[1])),
               int(max(y0 - abs(h * math.sin(theta)) - 4, 0)), int(min(y0 + abs(h * math.sin(theta)) + 5, data.shape[0])))
        mx, my = moment_centre(data, mask, box, noise)
        if np.isfinite(mx) and math.hypot(mx - x0, my - y0) < 0.25 * length + 2:
            x0, y0 = mx, my
        fit = fit_trail(data, variance, mask, x0, y0, length, theta, psf_sigma)
        if (
            not fit.success
            or abs(fit.length - length) > 0.5 * length + 5
            or math.hypot(fit.x - x0, fit.y - y0) > 0.25 * length + 3
            or not max(fit.x_err, fit.y_err) < 0.1 * length + 1.0
            or not fit.flux > 5.0 * fit.flux_err
        ):
            # the row's own measurement (a trail found by a fit already: a chain of faint pieces) may still
            # lack its ends: settled from there, or kept as it is
            fit, settled = _settle_ends(_row_fit(out[first]), data, variance, mask, psf_sigma, max_length)
            if not settled:
                info["n_spike_rejected"] += int(near_core[first])
                continue
        else:
            fit, settled = _settle_ends(fit, data, variance, mask, psf_sigma, max_length)
        fit = _grow(fit, data, variance, mask, psf_sigma, max_length)
        uncovered = uncovered_pieces(det, group, fit, psf_sigma)
        if uncovered:
            # the joined line's fit settled elsewhere: the pieces it left out are sources of their own (re-measured
            # alone), the others stay joined (re-measured without them)
            for i in group:
                for name in out.colnames:
                    out[name][i] = det[name][i]
            dropped.difference_update(group)
            info["n_joined"] -= len(group) - 1
            info["n_unjoined"] += 1
            rest = [i for i in group if i not in uncovered]
            parts = ([rest] if rest else []) + [[i] for i in uncovered]
            for part in parts:
                info["n_joined"] += _join_rows(out, part)
                dropped.update(part[1:])
                near_core[part[0]] = near_core_of(part[0])
            work.extend(reversed(parts))
            continue
        info["n_spike_rejected"] += int(near_core[first])
        info["n_ends_moved"] += settled
        info["n_fitted"] += 1
        out["x"][first], out["y"][first] = fit.x, fit.y
        out["length"][first], out["theta"][first] = fit.length, fit.theta
        out["length_err"][first], out["theta_err"][first] = fit.length_err, fit.theta_err
        out["x_err"][first] = max(fit.x_err, 1e-3)
        out["y_err"][first] = max(fit.y_err, 1e-3)
        out["flux"][first], out["flux_err"][first] = fit.flux, fit.flux_err
        out["snr"][first] = fit.flux / max(fit.flux_err, 1e-12)
        out["kind"][first] = "trail"
        out["cut"][first] = cut_ends(data.shape, fit.x, fit.y, fit.length, fit.theta, 3.0 * psf_sigma + 2.0)
    if dropped:
        out.remove_rows(sorted(dropped))
    info["n_short_refit"] = _refit_short_trails(out, data, variance, mask, psf_sigma, min_length)
    info["n_patchy"] = label_patchy_trails(out, data, variance, mask, psf_sigma)
    return out, info


#: Trails at least this long [px] are tested for light spread along them (:func:`patchy_trail`), in
#: :data:`PATCHY_SECTIONS` equal sections.
PATCHY_MIN_LENGTH = 40.0
PATCHY_SECTIONS = 8
#: An inner section below this share of the median section, by at least :data:`PATCHY_SIGMA` of its error, is a gap
#: no trail has.
PATCHY_RATIO = 0.5
PATCHY_SIGMA = 6.0


def patchy_trail(data: np.ndarray, variance: np.ndarray, mask: np.ndarray, x: float, y: float, length: float,
                 theta: float, psf_sigma: float) -> bool:
    """Whether a segment's light is gathered in patches instead of spread along it, as a trail's is.

    In dense fields with wide PSF wings, the extraction's segmentation joins neighbouring stars into footprints of
    ~10^4 px whose moments read as trails of 100-400 px (member 474: S/N 120-1300, up to seven per CCD image; one was
    paired with a real trail into a false 195"/h object).  A trail, however faint or crossed by a star, fills every
    section of its length (:func:`~ssodetect.streaks.model.section_amplitudes`, :data:`PATCHY_SECTIONS` of them);
    such a footprint has sections with nothing but sky between its stars.  The segment is patchy when the median
    section holds no light, or when one of the inner sections (the end ones are left out: a fit a little longer
    than its trail half-fills them) is below :data:`PATCHY_RATIO` of the median section by :data:`PATCHY_SIGMA` of
    its error, with sections at least as bright as the median on both sides of it (a fit misaligned with a real
    trail, in a crowd of crossing trails, fades towards one end or both instead).  On the tuning members' 127
    trails of 40-125 px (S/N 8.5-265) the lowest inner section of a real trail was 0.22 of the median at 3.8
    sigma (S/N 8.9) or 0.61 at 9.0 sigma; the joined stars' footprints of member 474 reached at most 0.44 at
    7.2-49 sigma.

    Parameters
    ----------
    data, variance, mask : ndarray (ny, nx)
        Background-subtracted image [ADU], its variance [ADU^2] and unusable pixels.
    x, y, length, theta : float
        Segment centre [px, 0-based], length [px] and angle [rad from +x towards +y].
    psf_sigma : float
        [px].
    """
    amplitude, error = section_amplitudes(data, variance, mask, x, y, length, theta, psf_sigma, PATCHY_SECTIONS)
    if not np.isfinite(amplitude).sum() >= PATCHY_SECTIONS // 2:  # (mostly masked or off the image: not judged)
        return False
    median = float(np.nanmedian(amplitude))
    if not median > 0.0:
        return True
    filled = np.where(np.isfinite(amplitude), amplitude, -np.inf) >= median
    for i in range(1, len(amplitude) - 1):
        a, e = amplitude[i], error[i]
        # a gap between light on both sides: a fit misaligned with its trail (crossing it, in a crowd of trails)
        # fades towards one end or both, without a gap between lit sections
        if (np.isfinite(a) and a < PATCHY_RATIO * median and median - a > PATCHY_SIGMA * e and filled[:i].any()
                and filled[i + 1:].any()):
            return True
    return False


def label_patchy_trails(det: Table, data: np.ndarray, variance: np.ndarray, mask: np.ndarray,
                        psf_sigma: float) -> int:
    """Label ``blend`` (in place) the trails of at least :data:`PATCHY_MIN_LENGTH` px whose light is not spread along
    them (:func:`patchy_trail`: stars joined into one footprint, chains of unrelated blobs); returns how many."""
    if len(det) == 0:
        return 0
    kind = np.asarray(det["kind"])
    length = np.asarray(det["length"], float)
    n = 0
    for i in np.flatnonzero((kind == "trail") & (length >= PATCHY_MIN_LENGTH)):
        if patchy_trail(data, variance, mask, float(det["x"][i]), float(det["y"][i]), float(length[i]),
                        float(det["theta"][i]), psf_sigma):
            det["kind"][i] = "blend"
            n += 1
    return n


def _refit_short_trails(det: Table, data, variance, mask, psf_sigma: float, min_length: float) -> int:
    """Short trails (slow movers: 2 FWHM up to ``min_length``) re-measured by the trailed-PSF fit where the
    extraction's barycentre is biased: a cosmic-ray hit masked in their core (the barycentre leans away from the
    hole; the fit skips the masked pixels), or a faint trail of which the extraction's isophote held only a part
    (the fit finds it longer, and its centre moved along it by at most half the difference: V~23.4 trails of
    15 px measured 7-11 px long with centres 1-4 px off), or a masked detector pixel (hot pixel, bad column) in or
    beside its footprint (``near_mask``: its barycentre is biased; the fit skips the pixel): such a trail is
    usable (``mask_fit``) when at most :data:`~ssodetect.detect.extract.MASK_FIT_MAX_INFO` of its information
    lies on masked pixels, like a point source's PSF fit (V 20.6 slow movers, S/N 220, fitted within 0.05 px,
    had been unusable in an exposure where their footprint touched a hot pixel), or the detector edge within
    ``3 psf_sigma + 1`` px of an end (the barycentre leans inwards).  Other short trails keep the
    extraction's measurement.  Updates ``x, y, length, theta``, the errors and ``mask_fit`` in place; returns
    how many were re-measured."""
    if len(det) == 0:
        return 0
    fwhm = psf_sigma / FWHM_TO_SIGMA
    length = np.asarray(det["length"], float)
    hit = (np.asarray(det["masked_core"], float) > 0) if "masked_core" in det.colnames else np.zeros(len(det), bool)
    near = np.asarray(det["near_mask"], bool) if "near_mask" in det.colnames else np.zeros(len(det), bool)
    # within 3 sigma + 1 px of the detector edge the barycentre leans inwards (a 9 px trail along the edge, its
    # centre line 1.3 px inside: 0.46 px); the fit uses the pixels on the detector (0.01 px)
    at_edge = edge_distance(data.shape, det["x"], det["y"], length, det["theta"]) < 3.0 * psf_sigma + 1.0
    rows = np.nonzero((np.asarray(det["kind"]) == "trail") & (length >= 2.0 * fwhm) & (length < min_length))[0]
    n = 0
    for k in rows:
        x0, y0, ln, th = float(det["x"][k]), float(det["y"][k]), float(length[k]), float(det["theta"][k])
        fit = fit_trail(data, variance, mask, x0, y0, ln, th, psf_sigma)
        if not (fit.success and math.hypot(fit.x - x0, fit.y - y0) < 0.5 * ln + 2.0 and 0.3 * ln < fit.length < 2.0 * ln + 2
                and fit.flux > 5.0 * fit.flux_err and max(fit.x_err, fit.y_err) < 1.0):
            continue
        partial = (fit.length > ln + max(2.0, 0.2 * ln)
                   and math.hypot(fit.x - x0, fit.y - y0) <= 0.5 * (fit.length - ln) + 1.0
                   and abs(_axis_diff(fit.theta, th)) < math.radians(15.0))
        if not (hit[k] or partial or near[k] or at_edge[k]):
            continue
        if near[k] and "mask_fit" in det.colnames:
            det["mask_fit"][k] = _masked_share(mask, fit.x, fit.y, fit.length, fit.theta, psf_sigma) <= MASK_FIT_MAX_INFO
        det["x"][k], det["y"][k] = fit.x, fit.y
        det["length"][k], det["theta"][k] = fit.length, fit.theta
        det["x_err"][k] = max(float(det["x_err"][k]), fit.x_err)
        det["y_err"][k] = max(float(det["y_err"][k]), fit.y_err)
        det["length_err"][k], det["theta_err"][k] = fit.length_err, fit.theta_err
        n += 1
    return n


def _masked_share(mask: np.ndarray, x: float, y: float, length: float, theta: float, psf_sigma: float) -> float:
    """Share of a trail's information on masked pixels: :func:`~ssodetect.detect.extract.masked_information`
    averaged over points every ``psf_sigma`` px along the segment (centre ``(x, y)`` [px], ``length`` [px],
    ``theta`` [rad from +x towards +y])."""
    n = max(int(math.ceil(length / max(psf_sigma, 0.25))) + 1, 2)
    t = np.linspace(-0.5 * length, 0.5 * length, n)
    return float(np.mean(masked_information(mask, x + t * math.cos(theta), y + t * math.sin(theta), psf_sigma)))


#: Fewest lines pointing at saturated cores from which an image's spike axes are judged (fewer: all are spikes).
MIN_SPIKE_LINES = 10


def spike_axes(angles: np.ndarray, *, window: float = 3.0, min_count: int = 3, n_sigma: float = 4.0) -> np.ndarray:
    """The axes [deg, -90..90] along which diffraction spikes lie: angles far more common than chance.

    Parameters
    ----------
    angles : ndarray (n,)
        Axis angles [deg, from +x towards +y, modulo 180] of the lines that point at a saturated core.
    window : float
        Width of the angle window [deg], rounded to whole degrees (a 1-degree histogram).
    min_count, n_sigma : int, float
        A window is an axis when it holds at least ``min_count`` lines and ``n_sigma`` Poisson deviations
        more than a uniform spread of the ``n`` angles would put in it.

    Returns
    -------
    ndarray (k,)
        Mean angle of each axis [deg], strongest first; empty when the angles are spread like chance.
    """
    a = np.mod(np.asarray(angles, float), 180.0)
    a = a[np.isfinite(a)]
    if a.size < min_count:
        return np.zeros(0)
    width = max(int(round(window)), 1)
    bins = np.floor(a).astype(np.int64) % 180
    hist = np.bincount(bins, minlength=180)
    counts = sum(np.roll(hist, -k) for k in range(width))  # window [i, i + width) deg, circular
    expected = a.size * width / 180.0
    threshold = max(min_count, expected + n_sigma * math.sqrt(expected))
    out = []
    taken = np.zeros(180, bool)
    for i in np.argsort(-counts, kind="stable"):
        if counts[i] < threshold:
            break
        if taken[i]:
            continue
        lo = float(i)
        rel = np.mod(a - lo + 90.0, 180.0) - 90.0  # angles relative to the window's start
        inside = (bins - i) % 180 < width  # the window's bins (rel may round onto its end: 14.999999999999996 - 12)
        out.append((lo + float(np.mean(rel[inside])) + 90.0) % 180.0 - 90.0)
        taken[np.arange(i - 2 * width, i + 2 * width + 1) % 180] = True
    return np.asarray(out)


def _on_axis(angle: float, length: float, axes: np.ndarray, *, tol: float = 3.0, max_geometric: float = 8.0) -> bool:
    """Whether a line at ``angle`` [deg] of ``length`` [px] lies along one of the spike ``axes`` [deg]: within
    ``tol`` plus its own angle's uncertainty (its width, ~2 px, over its length; at most ``max_geometric``)."""
    if axes.size == 0:
        return False
    slack = tol + min(math.degrees(math.atan2(2.0, max(length, 1.0))), max_geometric)
    diff = np.abs(np.mod(angle - axes + 90.0, 180.0) - 90.0)
    return bool(np.any(diff <= slack))


def _row_fit(row) -> TrailFit:
    """A detection row's trail measurement as a :class:`~ssodetect.streaks.model.TrailFit` (a fit's start)."""
    nan = float("nan")
    err = [float(row[c]) if c in row.colnames else nan for c in ("x_err", "y_err", "length_err", "theta_err")]
    return TrailFit(x=float(row["x"]), y=float(row["y"]), length=float(row["length"]), theta=float(row["theta"]),
                    flux=float(row["flux"]), background=0.0, x_err=err[0], y_err=err[1], along_err=nan, across_err=nan,
                    length_err=err[2], theta_err=err[3], flux_err=float(row["flux_err"]), chi2_dof=nan, success=True)


def _settle_ends(fit, data, variance, mask, psf_sigma: float, max_length: float):
    """A trail fit moved to the ends of the segment of highest S/N along its axis when that fits better.

    The fit starts from the extraction's isophote, which holds only the brighter part of a faint trail,
    and a least-squares fit barely feels a few noisy pixels more or less at each end: it stays where it
    started (:func:`~ssodetect.streaks.model.scan_trail_ends`).  The ends are searched over a window
    twice the fitted length plus 30 px; the fit is repeated from that segment and from itself on one
    stamp covering the window, and the lower robust cost wins, with its own errors (a stretch of the axis
    the scan found to hold another source is not masked in the fits: an end in a masked gap leaves length
    and flux degenerate).  Returns ``(fit, moved)``.
    """
    if not (fit.length > 0 and fit.flux > 0 and np.isfinite(fit.theta)):
        return fit, False
    half = min(fit.length + 15.0, 0.5 * max_length)
    a, b, _, _ = scan_trail_ends(data, variance, mask, fit.x, fit.y, fit.theta, psf_sigma, half)
    if not (np.isfinite(a) and b - a >= 2.0):
        return fit, False
    c, length = 0.5 * (a + b), b - a
    if abs(length - fit.length) <= 3.0 and abs(c) <= 1.5:
        return fit, False  # the scan agrees with the fit
    ct, st = math.cos(fit.theta), math.sin(fit.theta)
    stamp = (fit.x, fit.y, 2.0 * half, fit.theta)  # both fits on one stamp: their costs compare
    snr = fit.flux / fit.flux_err if fit.flux_err > 0 else float("nan")
    guess = replace(fit, x=fit.x + c * ct, y=fit.y + c * st, length=length, flux=fit.flux * max(length / fit.length, 0.5))
    fits = [f for f in (fit_trail(data, variance, mask, *stamp, psf_sigma, start=guess),
                        fit_trail(data, variance, mask, *stamp, psf_sigma, start=fit))
            # the first fit's tests, its S/N relaxed by a third (a faint trail's whole length may fit at S/N
            # ~5 where its brighter part did at 5.5; a fit pulled off by a neighbour falls to ~0)
            if f.success and f.length <= max_length and f.flux > max(3.0, 0.67 * snr) * f.flux_err
            and max(f.x_err, f.y_err) < 0.1 * f.length + 1.0]
    if not fits:
        return fit, False
    best = min(fits, key=lambda f: trail_cost(data, variance, mask, f, *stamp, psf_sigma))
    moved = abs(best.length - fit.length) > 1.0 or math.hypot(best.x - fit.x, best.y - fit.y) > 0.5
    return best, moved


def _grow(fit, data, variance, mask, psf_sigma: float, max_length: float, *, steps: int = 3):
    """Refit a trail on a longer stamp while it keeps growing with no loss of significance.

    A fit sees only a stamp a few PSF widths beyond the first guess's ends, so a trail
    found from its brightest fragment would stay that short; each step offers a stamp 30 % longer,
    starts from the fit so far (most trials end where they start: 2.0 -> 1.0 ms per trial on a 4k
    Euclid-like CCD image) and keeps the result when the trail grew and its flux S/N did not drop.
    """
    for _ in range(steps):
        trial = fit_trail(data, variance, mask, fit.x, fit.y, min(1.3 * fit.length + 10.0, max_length), fit.theta,
                          psf_sigma, start=fit)
        if not (trial.success and trial.length > fit.length + 3.0 and trial.length <= max_length
                and trial.flux / trial.flux_err >= fit.flux / fit.flux_err):
            break
        fit = trial
    return fit


def cut_ends(shape: tuple[int, int], x: float, y: float, length: float, theta: float, distance: float) -> int:
    """Which ends of a trail lie within ``distance`` px of the detector edge.

    Returns 0 (none), 1 (the end at ``(x, y) + length/2 (cos theta, sin theta)``), -1 (the other) or 2 (both).
    """
    ny, nx = shape
    c, s = math.cos(theta), math.sin(theta)
    at_edge = [min(px, nx - 1 - px, py, ny - 1 - py) < distance
               for px, py in ((x + 0.5 * length * c, y + 0.5 * length * s), (x - 0.5 * length * c, y - 0.5 * length * s))]
    return 2 if all(at_edge) else 1 if at_edge[0] else -1 if at_edge[1] else 0


#: Shorter trails [FWHM, the larger of the PSF's and the trail's own width] are not clear of the stars' trail on a
#: trailed field (:func:`~ssodetect.streaks.field.field_motion`): a star centred on the edge, cut in half, looks like
#: a trail along it 2 of its own FWHM long.
EDGE_MIN_TRAIL_FWHM = 2.5


def edge_clear(shape: tuple[int, int], x, y, length, theta, psf_sigma: float) -> np.ndarray:
    """Whether both ends of each (truncated) trail lie at least the margin ``1.5 psf_sigma + 1`` px inside every
    detector edge, whatever the trail's direction.

    Nearer, the edge may hide part of the trail: heading out, its end (on 40 runs of family members 151-180, trails
    that ran off the edge had their fitted ends up to 1.1 px inside it; at 40-45 deg 2-3 px along the axis short of
    it); running along the edge, half its PSF, and what looks like a trail along the edge may be a star cut in half
    (~2 of its own FWHM long, measured 1.4 px too far in) or a short trail leaving the detector obliquely, cut in
    half (member 460: a V 20.5 slow mover's 5 px trail at 22 deg to the edge, its centre 0.26 px beyond it, was
    measured as a 5.2 px trail along it 1.24 px inside, 1 px off; not cut, with its errors of 0.05 px it refused the
    mover its only third exposure).  Pieces of long trails measured along an edge were 7-20 px off, and on member 195
    a 12.6 px piece of a trail along an edge, not cut, made a false 2-trail object.  A trail not clear is
    ``edge_cut``: it may still complete a slow tracklet with widened errors (``edge_weak``) and the fast linker
    restores its cut end from the other exposures; an earlier relaxation for trails running along an edge 1-2 px
    inside (fitted within 0.1-0.6 px) predates ``edge_weak`` and cost member 460 its mover.

    Parameters
    ----------
    shape : (ny, nx)
        Image shape; pixel centres 0-based, the edges at -0.5 and ``n - 0.5``.
    x, y, length, theta : ndarray (n,)
        Trail centres [px], lengths [px] and angles [rad, from +x towards +y].
    psf_sigma : float
        PSF Gaussian sigma [px].

    Returns
    -------
    ndarray (n,) bool
    """
    ny, nx = shape
    x, y = np.asarray(x, float), np.asarray(y, float)
    half = 0.5 * np.nan_to_num(np.asarray(length, float))
    c, s = np.cos(np.asarray(theta, float)), np.sin(np.asarray(theta, float))
    margin = 1.5 * psf_sigma + 1.0
    clear = np.ones(x.size, bool)
    for sign in (1.0, -1.0):
        ex, ey = x + sign * half * c, y + sign * half * s
        clear &= (np.minimum(ex + 0.5, nx - 0.5 - ex) >= margin) & (np.minimum(ey + 0.5, ny - 0.5 - ey) >= margin)
    return clear


def edge_cut(shape: tuple[int, int], truncated, edge_fit, kind, x, y, length, theta,
             psf_sigma: float) -> tuple[np.ndarray, int]:
    """Which detections the detector edge cuts (centroid and flux biased): unusable for linking.

    A point source whose footprint or aperture is truncated is cut when its centre lies within the zone where its
    core reaches the edge (:func:`~ssodetect.detect.extract.near_edge`), not on a test of its measured distance (on
    a real frame whose first row is dark, a star ~1 sigma from the edge was measured 2-3 px further in, passed such
    a test and, drifting off the edge, was linked as a slow mover), unless a PSF fit of the pixels on the detector
    measured it (``edge_fit``); beyond that zone only its flux is truncated.  A trail's position (trailed-PSF fit, or
    windowed moments for a short one) weighs the light within ~3 sigma of its segment: it is cut only when its ends
    are not :func:`edge_clear`.  The isophotal footprint or the aperture of a bright short trail reaches the edge
    from 6-10 px: V 20-22 slow movers, S/N 100-300, had been unusable in every exposure where they came that near;
    a flux from a truncated aperture stays low.

    Parameters
    ----------
    shape : (ny, nx)
        Image shape.
    truncated, edge_fit : ndarray (n,) bool
        Footprint or aperture truncated by the edge (sep's flags); measured by the edge PSF fit.
    kind : ndarray (n,) str
        Detection kind (``trail`` for trails).
    x, y, length, theta : ndarray (n,)
        Centres [px, 0-based], trail lengths [px] and angles [rad, from +x towards +y].
    psf_sigma : float
        PSF Gaussian sigma [px].

    Returns
    -------
    cut : ndarray (n,) bool
    n_kept : int
        Truncated detections not cut (trails with clear ends, point sources beyond the core zone).
    """
    kind = np.asarray(kind)
    x, y = np.asarray(x, float), np.asarray(y, float)
    cut = np.asarray(truncated, bool) & ~np.asarray(edge_fit, bool)
    n_cut = int(cut.sum())
    point = np.nonzero(cut & (kind == "point"))[0]
    cut[point[~near_edge(shape, x[point], y[point], psf_sigma)]] = False
    trail = np.nonzero(cut & (kind == "trail"))[0]
    if trail.size:
        cut[trail[edge_clear(shape, x[trail], y[trail], np.asarray(length, float)[trail],
                             np.asarray(theta, float)[trail], psf_sigma)]] = False
    return cut, n_cut - int(cut.sum())


def edge_distance(shape: tuple[int, int], x, y, length, theta) -> np.ndarray:
    """Distance [px] from each segment's ends to the nearest detector edge.

    Parameters
    ----------
    shape : (ny, nx)
        Image shape; pixel centres 0-based, the edges at -0.5 and ``n - 0.5``.
    x, y, length, theta : ndarray (n,)
        Segment centres [px], lengths [px] and angles [rad, from +x towards +y].

    Returns
    -------
    ndarray (n,)
        The smallest distance of either end to any edge [px]; negative for an end beyond the edge.
    """
    ny, nx = shape
    x, y = np.asarray(x, float), np.asarray(y, float)
    half = 0.5 * np.nan_to_num(np.asarray(length, float))
    dx, dy = np.abs(half * np.cos(np.asarray(theta, float))), np.abs(half * np.sin(np.asarray(theta, float)))
    return np.minimum.reduce([x - dx + 0.5, nx - 0.5 - (x + dx), y - dy + 0.5, ny - 0.5 - (y + dy)])


def _along_edge(shape: tuple[int, int], x: float, y: float, theta: float, distance: float,
                max_angle: float = math.radians(10.0)) -> bool:
    """Whether a segment centred at ``(x, y)`` lies within ``distance`` px of a detector edge and parallel to it."""
    ny, nx = shape
    horizontal = abs(math.sin(theta)) < math.sin(max_angle)
    vertical = abs(math.cos(theta)) < math.sin(max_angle)
    return (vertical and min(x, nx - 1 - x) < distance) or (horizontal and min(y, ny - 1 - y) < distance)


def _core_on_axis(points: np.ndarray | None, x: float, y: float, length: float, theta: float, reach: float, *,
                  band: float) -> int | None:
    """Index into ``points`` (m, 2: ``(y, x)`` of saturated pixels) of the one nearest a segment on its extended axis
    (within ``band`` px of it, at most ``reach`` px beyond an end); None when there is none, or when a saturated pixel
    lies along the segment itself (two spikes of one star joined through its core)."""
    if points is None or len(points) == 0:
        return None
    c, si = math.cos(theta), math.sin(theta)
    u = (points[:, 1] - x) * c + (points[:, 0] - y) * si
    w = -(points[:, 1] - x) * si + (points[:, 0] - y) * c
    near_axis = np.abs(w) <= band
    if np.any(near_axis & (np.abs(u) <= 0.5 * length)):
        return None
    beyond = near_axis & (np.abs(u) <= 0.5 * length + reach)
    if not beyond.any():
        return None
    return int(np.nonzero(beyond)[0][int(np.argmin(np.abs(u[beyond])))])


def _gap_to_core(data: np.ndarray, variance: np.ndarray, mask: np.ndarray, points: np.ndarray, x: float, y: float,
                 length: float, theta: float, psf_sigma: float, reach: float) -> bool:
    """Whether the line between a segment and the nearest saturated pixel on its extended axis is empty.

    A diffraction spike runs on from its star's saturated core; a mover's trail lying along a spike axis by
    chance, its extension meeting a saturated pixel 25 px beyond its end, has nothing between (a V 22.7 trail
    of 34 px had been labelled a spike).  The stretch from the segment's end to the first saturated pixel within
    3 px of the axis and ``reach`` px of the end, less ``2 s + 1`` px at each side (``s^2 = sigma^2 + 1/12``), is
    cut into sections of ``2 s + 1`` px; the line is broken where consecutive sections covering ``4 s + 1`` px or
    more each hold less than :data:`GAP_FRACTION` of the segment's light per unit length by :data:`GAP_SIGMA`
    errors (:func:`~ssodetect.streaks.model.section_amplitudes`, masked pixels skipped; the star's wings fill the
    sections next to it).

    Parameters
    ----------
    data, variance, mask : ndarray (ny, nx)
        Background-subtracted image [ADU], its variance [ADU^2], unusable pixels.
    points : ndarray (m, 2)
        ``(y, x)`` of the saturated pixels.
    x, y, length, theta : float
        Segment centre [px], length [px], angle [rad from +x towards +y].
    psf_sigma : float
        [px].
    reach : float
        How far beyond the segment's ends a saturated pixel is sought [px].
    """
    k = _core_on_axis(points, x, y, length, theta, reach, band=3.0)
    if k is None:
        return False
    c, si = math.cos(theta), math.sin(theta)
    core = (points[k, 1] - x) * c + (points[k, 0] - y) * si  # along the axis [px]
    s = math.sqrt(psf_sigma**2 + 1.0 / 12.0)
    start, stop = 0.5 * length + 2.0 * s + 1.0, abs(core) - 2.0 * s - 1.0
    if stop - start < 4.0 * s + 1.0:
        return False
    own, own_err = section_amplitudes(data, variance, mask, x, y, length, theta, psf_sigma)
    if not np.isfinite(own[0]):
        return False
    # in sections of 2 s + 1 px (the star's wings fill the last ones): a run of empty ones 4 s + 1 px long
    step = 2.0 * s + 1.0
    n = max(int((stop - start) // step), 1)
    mid = math.copysign(0.5 * (start + stop), core)
    gap, gap_err = section_amplitudes(data, variance, mask, x + mid * c, y + mid * si, stop - start, theta, psf_sigma, n)
    empty = np.isfinite(gap) & (gap < GAP_FRACTION * own[0]) & (own[0] - gap > GAP_SIGMA * np.hypot(gap_err, own_err[0]))
    run = longest = 0
    for e in empty:
        run = run + 1 if e else 0
        longest = max(longest, run)
    return bool(longest * (stop - start) / n >= 4.0 * s + 1.0)


#: Angle [deg] by which a segment is turned about a saturated star to measure the star's wings beside its spikes
#: (:func:`_unmirrored`): half way between two spikes of a six-spiked star, a third of the way for four.
WING_TURN = 30.0


def _saturated_centre(saturated: np.ndarray, y: int, x: int, reach: float) -> tuple[float, float]:
    """Centre ``(x, y)`` [px] of the saturated star whose pixel ``(y, x)`` is: the mean column of its 8-connected
    saturated region within ``reach`` px, and the mean of the rows at least half as wide as its widest (a bleed runs
    along the columns, one or two pixels wide, and often further one way than the other; a second saturated star
    nearby is another region)."""
    from scipy import ndimage

    ny, nx = saturated.shape
    r = int(math.ceil(reach))
    y0, x0 = max(y - r, 0), max(x - r, 0)
    labels, _ = ndimage.label(saturated[y0:min(y + r + 1, ny), x0:min(x + r + 1, nx)], structure=np.ones((3, 3), bool))
    ys, xs = np.nonzero(labels == labels[y - y0, x - x0])
    widths = np.bincount(ys)
    rows = np.nonzero(widths >= 0.5 * widths.max())[0]
    return float(x0 + np.mean(xs)), float(y0 + np.average(rows, weights=widths[rows]))


def _unmirrored(data: np.ndarray, variance: np.ndarray, mask: np.ndarray, saturated: np.ndarray, points: np.ndarray,
                x: float, y: float, length: float, theta: float, psf_sigma: float, reach: float) -> bool:
    """Whether a segment pointing at a saturated star lacks the twin on the star's other side that a spike has.

    A diffraction pattern is point-symmetric (a real aperture's): every spike has a twin of equal light through the
    star's centre.  A V 23.2 mover's 12 px trail 16 px from a saturated star, along a spike axis, had no gap to the
    star that its faint light could show (the star's Moffat wings fill it) and was labelled a spike (member 381).
    The star's centre is that of the saturated core met first on the segment's extended axis (within 4 px of it;
    :func:`_saturated_centre`); the light per unit length of the segment and of its reflection through that
    centre, each less the star's wings there (the mean of the segment turned by ``+-`` :data:`WING_TURN` degrees
    about the centre), are compared: the segment is unmirrored when its twin holds less than :data:`GAP_FRACTION`
    of its light, by :data:`GAP_SIGMA` errors.  A twin off the image, on masked or saturated pixels, or with no
    measurable light of the segment's own, decides nothing (False).
    """
    # (:func:`_touches` samples the axis 3 px to each side at whole pixels: a core 3.8 px off it is met)
    k = _core_on_axis(points, x, y, length, theta, reach, band=4.0)
    if k is None:
        return False
    cx, cy = _saturated_centre(saturated, int(points[k, 0]), int(points[k, 1]), reach)
    ny, nx = data.shape

    def amplitude(turn: float):
        """Light per unit length [ADU/px] and its error of the segment turned by ``turn`` [deg] about the centre."""
        t = math.radians(turn)
        ct, st = math.cos(t), math.sin(t)
        xr = cx + (x - cx) * ct - (y - cy) * st
        yr = cy + (x - cx) * st + (y - cy) * ct
        half = 0.5 * length + 3.0 * psf_sigma + 2.0
        ends = [(xr + e * half * math.cos(theta + t), yr + e * half * math.sin(theta + t)) for e in (-1.0, 1.0)]
        if not all(0 <= ex < nx and 0 <= ey < ny for ex, ey in ends):
            return math.nan, math.nan
        if turn == 180.0 and _touches(saturated, xr, yr, length, theta + t, band=2, points=points):
            return math.nan, math.nan
        amp, err = section_amplitudes(data, variance, mask, xr, yr, length, theta + t, psf_sigma)
        return float(amp[0]), float(err[0])

    own, own_err = amplitude(0.0)
    twin, twin_err = amplitude(180.0)
    wings = [amplitude(turn) for turn in (WING_TURN, -WING_TURN, 180.0 + WING_TURN, 180.0 - WING_TURN)]
    wings = [(a, e) for a, e in wings if math.isfinite(a)]
    if not (math.isfinite(own) and math.isfinite(twin) and wings):
        return False
    wing = float(np.median([a for a, _ in wings]))
    wing_err = float(np.median([e for _, e in wings])) / math.sqrt(len(wings))
    own_light, twin_light = own - wing, twin - wing
    if own_light <= GAP_SIGMA * math.hypot(own_err, wing_err):
        return False
    return bool(twin_light < GAP_FRACTION * own_light
                and own_light - twin_light > GAP_SIGMA * math.hypot(own_err, twin_err))


def _touches(saturated: np.ndarray, x, y, length, theta, *, reach: float = 2.0, band: int = 0,
             points: np.ndarray | None = None) -> bool:
    """Whether a segment, extended by ``reach`` px at both ends and widened by ``band`` px, meets saturated pixels.

    ``points`` (m, 2): the (y, x) of the saturated pixels, when known: segments whose bounding box holds
    none are answered without sampling the line.
    """
    ny, nx = saturated.shape
    half = 0.5 * length + reach
    c, s = math.cos(theta), math.sin(theta)
    if points is not None:
        ex, ey = abs(half * c) + band + 1, abs(half * s) + band + 1
        if not np.any((np.abs(points[:, 1] - x) <= ex) & (np.abs(points[:, 0] - y) <= ey)):
            return False
    t = np.linspace(-half, half, int(2 * half) + 2)
    for w in range(-band, band + 1):
        px = np.round(x + t * c - w * s).astype(int)
        py = np.round(y + t * s + w * c).astype(int)
        inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        if saturated[py[inside], px[inside]].any():
            return True
    return False
