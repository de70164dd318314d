"""Pattern matching of two point lists: triangles, similarity transforms, verification.

Used twice: to match detections to reference stars projected through a header
WCS that may be off by a minute of arc and a few degrees (expected transform
close to the identity), and for blind solving (reference stars on a tangent plane
in arcsec, any rotation, either parity, a pixel-scale range).

Method (in the spirit of Groth 1986 / astroalign / astrometry.net's verification):

1. form every triangle of the ``n`` brightest points of each list; describe each by
   the scale- and rotation-invariant side ratios ``(b/a, c/a)`` with ``a >= b >= c``,
   vertices ordered by the side they face;
2. pair triangles whose invariants agree within ``tolerance`` (k-d tree);
3. each pair gives a similarity transform ``w = s R(theta) P z + t`` (``P`` the
   parity) fitted to its three vertex pairs; keep those within the allowed scale,
   rotation and translation ranges;
4. verify every surviving hypothesis by transforming all bright source points
   and counting reference points within ``match_radius``; the best count must
   beat chance by a wide margin (expected random matches from the reference
   density) to be accepted.

Coordinates are plain 2-D arrays of shape ``(n, 2)``; for images, 0-based pixels.
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.stats import poisson

__all__ = ["Similarity", "PatternMatch", "PatternIndex", "triangle_invariants", "match_patterns", "match_offset",
           "match_grid", "match_nearest", "fit_similarity"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Similarity:
    """``w = scale * R(rotation) * P(parity) z + (tx, ty)`` with complex ``z = x + i y``.

    Attributes
    ----------
    scale : float
        Output units per input unit.
    rotation : float
        Rotation [deg], counter-clockwise from +x towards +y.
    parity : int
        +1, or -1 when the input is mirrored (``y -> -y``) before rotating.
    tx, ty : float
        Translation (output units).
    """

    scale: float
    rotation: float
    parity: int
    tx: float
    ty: float

    def apply(self, xy: np.ndarray) -> np.ndarray:
        """Transform points ``(n, 2)`` -> ``(n, 2)``."""
        xy = np.asarray(xy, float)
        z = xy[:, 0] + 1j * xy[:, 1] * self.parity
        w = self.scale * np.exp(1j * math.radians(self.rotation)) * z + (self.tx + 1j * self.ty)
        return np.column_stack([w.real, w.imag])


@dataclass
class PatternMatch:
    """Result of :func:`match_patterns`.

    Attributes
    ----------
    transform : Similarity
        Maps source coordinates onto reference coordinates.
    pairs : ndarray (m, 2) int
        Indices (source, reference) of the matched points (one-to-one).
    n_expected : float
        Matches expected by chance for one hypothesis (beyond its own triangle).
    n_hypotheses : int
        Triangle pairs that were verified.
    """

    transform: Similarity
    pairs: np.ndarray
    n_expected: float
    n_hypotheses: int

    @property
    def n_matched(self) -> int:
        return int(len(self.pairs))


def triangle_invariants(xy: np.ndarray, *, min_side: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Every triangle of the points with its similarity invariants.

    Parameters
    ----------
    xy : ndarray (n, 2)
    min_side : float
        Triangles with a side shorter than this are dropped (ill-conditioned).

    Returns
    -------
    vertices : ndarray (m, 3) int
        Point indices, ordered as the vertices facing the longest, middle and
        shortest side.
    invariants : ndarray (m, 2)
        ``(b/a, c/a)`` for sides ``a >= b >= c``.
    """
    n = len(xy)
    if n < 3:
        return np.zeros((0, 3), int), np.zeros((0, 2))
    tri = np.array(list(itertools.combinations(range(n), 3)), dtype=np.int64)
    p = xy[tri]  # (m, 3, 2)
    # side k is opposite vertex k
    sides = np.stack(
        [
            np.hypot(*(p[:, 1] - p[:, 2]).T),
            np.hypot(*(p[:, 0] - p[:, 2]).T),
            np.hypot(*(p[:, 0] - p[:, 1]).T),
        ],
        axis=1,
    )
    order = np.argsort(-sides, axis=1)
    sides = np.take_along_axis(sides, order, axis=1)
    tri = np.take_along_axis(tri, order, axis=1)
    keep = sides[:, 2] > max(min_side, 1e-9)
    sides, tri = sides[keep], tri[keep]
    return tri, np.column_stack([sides[:, 1] / sides[:, 0], sides[:, 2] / sides[:, 0]])


def _similarities(src: np.ndarray, ref: np.ndarray, parity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares similarity for each set of corresponding points.

    ``src``, ``ref``: complex arrays (h, k).  Returns complex ``a`` (scale and
    rotation), complex ``t`` and the rms residual, each (h,).
    """
    z = src.real + 1j * src.imag * parity
    zc = z - z.mean(axis=1, keepdims=True)
    wc = ref - ref.mean(axis=1, keepdims=True)
    a = np.sum(np.conj(zc) * wc, axis=1) / np.maximum(np.sum(np.abs(zc) ** 2, axis=1), 1e-300)
    t = ref.mean(axis=1) - a * z.mean(axis=1)
    resid = np.sqrt(np.mean(np.abs(a[:, None] * z + t[:, None] - ref) ** 2, axis=1))
    return a, t, resid


def fit_similarity(src_xy: np.ndarray, ref_xy: np.ndarray, parity: int = 1) -> Similarity:
    """Least-squares similarity transform mapping ``src_xy`` onto ``ref_xy`` (both ``(n, 2)``, n >= 2)."""
    z = (src_xy[:, 0] + 1j * src_xy[:, 1])[None, :]
    w = (ref_xy[:, 0] + 1j * ref_xy[:, 1])[None, :]
    a, t, _ = _similarities(z, w, parity)
    return Similarity(float(abs(a[0])), float(np.degrees(np.angle(a[0]))), parity, float(t[0].real), float(t[0].imag))


def _one_to_one(dist: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(source, reference) pairs from nearest-neighbour queries, each reference used once (closest wins)."""
    ok = np.isfinite(dist)
    src = np.nonzero(ok)[0]
    ref = idx[ok]
    order = np.argsort(dist[ok])
    _, first = np.unique(ref[order], return_index=True)
    chosen = order[first]
    return np.column_stack([src[chosen], ref[chosen]]).astype(np.int64)


class PatternIndex:
    """Triangles of a reference point list, ready to be matched many times.

    Parameters
    ----------
    ref_xy : ndarray (n, 2)
        Reference points, brightest first.
    n_ref : int
        Brightest points that form triangles.
    min_side : float
        Shortest triangle side (reference units).
    area : float, optional
        Area the points cover (default: their bounding box), for chance-match estimates.
    """

    def __init__(self, ref_xy: np.ndarray, *, n_ref: int = 50, min_side: float = 0.0, area: float | None = None):
        self.xy = np.asarray(ref_xy, float).reshape(-1, 2)
        self.tri, self.inv = triangle_invariants(self.xy[:n_ref], min_side=min_side)
        self.inv_tree = cKDTree(self.inv) if len(self.inv) else None
        self.tree = cKDTree(self.xy) if len(self.xy) else None
        if area is None and len(self.xy):
            span = np.ptp(self.xy, axis=0)
            area = float(max(span[0], 1e-9) * max(span[1], 1e-9))
        self.area = area or 0.0

    def __len__(self) -> int:
        return len(self.xy)


def match_patterns(
    src_xy: np.ndarray,
    ref: PatternIndex,
    *,
    scale_range: tuple[float, float],
    max_rotation: float | None = None,
    parities: tuple[int, ...] = (1,),
    max_shift: float | None = None,
    match_radius: float,
    n_src: int = 25,
    tolerance: float = 0.01,
    min_matches: int = 5,
    min_side: float = 0.0,
    false_alarm_rate: float = 1e-4,
) -> PatternMatch | None:
    """Find the similarity transform that maps a source list onto a reference list.

    Parameters
    ----------
    src_xy : ndarray (n, 2)
        Source points sorted brightest first (the first ``n_src`` form triangles
        and verify hypotheses; all are used in the final matching).
    ref : PatternIndex
        Reference points and their triangles.
    scale_range : (float, float)
        Allowed scale (reference units per source unit).
    max_rotation : float or None
        Largest rotation [deg] allowed (None: any).
    parities : tuple of int
        Parities to try (+1 proper, -1 mirrored).
    max_shift : float or None
        Largest translation allowed (reference units), None for any.
    match_radius : float
        Verification radius (reference units).
    n_src : int
        Brightest source points used for triangles.
    tolerance : float
        Invariant-space matching radius.
    min_matches : int
        Smallest acceptable number of verified matches.
    min_side : float
        Shortest triangle side in source units.
    false_alarm_rate : float
        Largest acceptable expected number of chance solutions: the Poisson
        probability of the extra matches (beyond the triangle's own three),
        times the number of hypotheses tried.

    Returns
    -------
    PatternMatch or None
        None when no hypothesis is significant.
    """
    src_xy = np.asarray(src_xy, float).reshape(-1, 2)
    if len(src_xy) < 3 or ref.inv_tree is None:
        return None
    ref_xy, r_tri, tree = ref.xy, ref.tri, ref.tree
    s_tri, s_inv = triangle_invariants(src_xy[:n_src], min_side=min_side)
    if len(s_tri) == 0:
        return None
    pairs = ref.inv_tree.query_ball_point(s_inv, r=tolerance)
    si = np.repeat(np.arange(len(s_tri)), [len(p) for p in pairs])
    ri = np.fromiter(itertools.chain.from_iterable(pairs), dtype=np.int64, count=si.size)
    if si.size == 0:
        return None
    zs = src_xy[s_tri[si]]
    zr = ref_xy[r_tri[ri]]
    zs = zs[..., 0] + 1j * zs[..., 1]
    zr = zr[..., 0] + 1j * zr[..., 1]
    verify_src = src_xy[: max(n_src, 60)]
    density = len(ref_xy) / max(ref.area, math.pi * match_radius**2)
    best = None
    n_hyp = 0
    for parity in parities:
        a, t, resid = _similarities(zs, zr, parity)
        scale = np.abs(a)
        ok = (scale >= scale_range[0]) & (scale <= scale_range[1]) & (resid < match_radius)
        if max_rotation is not None:
            ok &= np.abs(np.degrees(np.angle(a))) <= max_rotation
        if max_shift is not None:
            centre = verify_src.mean(axis=0)
            moved = a * (centre[0] + 1j * parity * centre[1]) + t - (centre[0] + 1j * centre[1])
            ok &= np.abs(moved) <= max_shift
        if not ok.any():
            continue
        a, t = a[ok], t[ok]
        # merge near-identical hypotheses: quantise (scale, angle, shift) and keep one per cell
        key = np.column_stack(
            [
                np.round(np.log(np.abs(a)) / 0.002),
                np.round(np.angle(a) / 0.002),
                np.round(t.real / match_radius),
                np.round(t.imag / match_radius),
            ]
        )
        _, first = np.unique(key, axis=0, return_index=True)
        a, t = a[first], t[first]
        n_hyp += a.size
        z = verify_src[:, 0] + 1j * parity * verify_src[:, 1]
        for start in range(0, a.size, 2000):
            w = a[start : start + 2000, None] * z[None, :] + t[start : start + 2000, None]
            dist, _ = tree.query(np.column_stack([w.real.ravel(), w.imag.ravel()]), distance_upper_bound=match_radius)
            counts = np.isfinite(dist).reshape(w.shape).sum(axis=1)
            k = int(np.argmax(counts))
            if best is None or counts[k] > best[0]:
                best = (int(counts[k]), a[start + k], t[start + k], parity)
    if best is None:
        return None
    count, a_best, t_best, parity = best
    # a hypothesis matches its own three triangle vertices by construction; the other
    # matches must be improbable by chance even after trying n_hyp hypotheses
    expected = len(verify_src) * density * math.pi * match_radius**2
    false_alarms = n_hyp * float(poisson.sf(count - 4, expected))
    if count < min_matches or false_alarms > false_alarm_rate:
        log.debug(
            "pattern match: best of %d hypotheses has %d matches (%.2f expected by chance, %.2g false alarms)",
            n_hyp, count, expected, false_alarms,
        )
        return None
    transform = Similarity(
        float(abs(a_best)), float(np.degrees(np.angle(a_best))), parity, float(t_best.real), float(t_best.imag)
    )
    return _refined(src_xy, ref_xy, tree, transform, match_radius, expected, n_hyp)


def _refined(src_xy, ref_xy, tree, transform: Similarity, match_radius: float, expected: float, n_hyp: int) -> PatternMatch:
    """Refine an accepted transform on all source points (two rounds of one-to-one matching and a
    least-squares similarity fit) and return the final pairs."""
    for radius in (match_radius, 0.5 * match_radius):
        dist, idx = tree.query(transform.apply(src_xy), distance_upper_bound=radius)
        matched = _one_to_one(dist, idx)
        if len(matched) >= 3:
            transform = fit_similarity(src_xy[matched[:, 0]], ref_xy[matched[:, 1]], transform.parity)
    dist, idx = tree.query(transform.apply(src_xy), distance_upper_bound=match_radius)
    matched = _one_to_one(dist, idx)
    return PatternMatch(transform=transform, pairs=matched, n_expected=expected, n_hypotheses=n_hyp)


def match_offset(
    src_xy: np.ndarray,
    ref: PatternIndex,
    *,
    max_shift: float,
    match_radius: float,
    n_src: int = 25,
    n_ref: int = 90,
    min_matches: int = 5,
    false_alarm_rate: float = 1e-4,
) -> PatternMatch | None:
    """The translation most bright source-reference pairs agree on: the fast path when a header WCS is right
    up to a shift (rotation and scale errors below ``match_radius`` across the image).

    Every (source, reference) offset within ``max_shift`` votes; the offset with the most votes within
    ``match_radius`` is verified like a pattern hypothesis (bright sources shifted onto the references,
    the count compared with chance: ``(max_shift / match_radius)^2`` independent offsets were tried) and
    refined to a similarity on all points.  Parameters as in :func:`match_patterns` (``n_ref``: brightest
    references that vote); None when no offset is significant (the caller then matches triangles).
    """
    src_xy = np.asarray(src_xy, float).reshape(-1, 2)
    ref_xy, tree = ref.xy, ref.tree
    if len(src_xy) < 3 or tree is None:
        return None
    bright = src_xy[:n_src]
    offsets = (ref_xy[None, :n_ref, :] - bright[:, None, :]).reshape(-1, 2)
    offsets = offsets[np.hypot(offsets[:, 0], offsets[:, 1]) <= max_shift]
    if len(offsets) < min_matches:
        return None
    votes = cKDTree(offsets).query_ball_point(offsets, match_radius, return_length=True)
    shift = offsets[int(np.argmax(votes))]
    verify_src = src_xy[: max(n_src, 60)]
    dist, _ = tree.query(verify_src + shift, distance_upper_bound=match_radius)
    count = int(np.isfinite(dist).sum())
    density = len(ref_xy) / max(ref.area, math.pi * match_radius**2)
    expected = len(verify_src) * density * math.pi * match_radius**2
    n_hyp = max(1, int(round((max_shift / match_radius) ** 2)))
    false_alarms = n_hyp * float(poisson.sf(count - 1, expected))
    if count < min_matches or false_alarms > false_alarm_rate:
        log.debug("offset match: best offset has %d matches (%.2f expected by chance, %.2g false alarms)",
                  count, expected, false_alarms)
        return None
    return _refined(src_xy, ref_xy, tree, Similarity(1.0, 0.0, 1, float(shift[0]), float(shift[1])), match_radius,
                    expected, n_hyp)


def match_nearest(
    src_xy: np.ndarray,
    ref: PatternIndex,
    *,
    match_radius: float,
    n_src: int = 300,
    min_matches: int = 5,
    false_alarm_rate: float = 1e-4,
) -> PatternMatch | None:
    """The identity, if it is right: sources whose nearest reference lies within ``match_radius``.

    The test a right header WCS must pass before any pattern is matched: every one of the ``n_src``
    brightest sources looks for its nearest reference; the count is compared with the matches
    expected by chance (the references' density times the match area, one hypothesis).  Junk among
    the sources (galaxies, artefacts, movers) only lowers the count, it cannot hide a right header.
    Returns None when the count is not significant (the header is off: match patterns instead).
    """
    src_xy = np.asarray(src_xy, float).reshape(-1, 2)[:n_src]
    if len(src_xy) < min_matches or ref.tree is None:
        return None
    dist, _ = ref.tree.query(src_xy, distance_upper_bound=match_radius)
    count = int(np.isfinite(dist).sum())
    density = len(ref.xy) / max(ref.area, math.pi * match_radius**2)
    expected = len(src_xy) * density * math.pi * match_radius**2
    if count < min_matches or float(poisson.sf(count - 1, expected)) > false_alarm_rate:
        log.debug("identity: %d of %d sources within %.1f of a reference (%.2f expected by chance)", count,
                  len(src_xy), match_radius, expected)
        return None
    return _refined(src_xy, ref.xy, ref.tree, Similarity(1.0, 0.0, 1, 0.0, 0.0), match_radius, expected, 1)


def match_grid(
    src_xy: np.ndarray,
    ref: PatternIndex,
    *,
    centre: tuple[float, float],
    max_shift: float,
    max_rotation: float,
    max_scale: float,
    match_radius: float,
    n_src: int = 60,
    n_ref: int = 120,
    min_matches: int = 5,
    false_alarm_rate: float = 1e-4,
    max_trials: int = 4000,
) -> PatternMatch | None:
    """Offset voting over a grid of rotations and scales: for a header off by a shift, a small rotation and a
    small scale error (a generalised Hough transform).

    For every trial rotation and scale (steps small enough that the points farthest from ``centre``
    move by at most half ``match_radius``), the brightest sources are rotated and scaled about
    ``centre`` and every (source, reference) offset within ``max_shift`` votes in cells of
    ``match_radius``; the (rotation, scale, offset) with the most votes is verified on the brightest
    sources against the matches expected by chance, with the number of trials (grid points times
    independent offsets) as the trials factor, and refined to a similarity on all points.  Robust to
    junk among the sources and to sparse references: only the true pairs agree on one offset.

    Parameters
    ----------
    src_xy : ndarray (n, 2)
        Source points, brightest first.
    ref : PatternIndex
        Reference points (brightest first).
    centre : (float, float)
        Centre of rotation and scaling (source units; the image centre).
    max_shift, match_radius : float
        Largest translation and the cell / verification radius (reference units).
    max_rotation : float
        Largest rotation searched [deg].
    max_scale : float
        Largest relative scale error searched.
    n_src, n_ref : int
        Brightest source / reference points that vote.
    min_matches : int
    false_alarm_rate : float
    max_trials : int
        Largest number of (rotation, scale) grid points; None is returned (with a debug line) when the
        ranges need more (the caller then matches triangles).

    Returns
    -------
    PatternMatch or None
    """
    src_xy = np.asarray(src_xy, float).reshape(-1, 2)
    if len(src_xy) < min_matches or ref.tree is None or len(ref.xy) < min_matches:
        return None
    bright = src_xy[:n_src] - np.asarray(centre, float)
    reach = float(np.max(np.hypot(bright[:, 0], bright[:, 1]))) if len(bright) else 0.0
    step = 0.5 * match_radius / max(reach, match_radius)  # radians, and relative scale
    n_rot = 2 * int(math.ceil(math.radians(max_rotation) / step)) + 1
    n_scale = 2 * int(math.ceil(max_scale / step)) + 1
    if n_rot * n_scale > max_trials:
        log.debug("grid match: %d x %d rotations and scales exceed %d trials", n_rot, n_scale, max_trials)
        return None
    rotations = np.linspace(-math.radians(max_rotation), math.radians(max_rotation), n_rot)
    scales = 1.0 + np.linspace(-max_scale, max_scale, n_scale)
    refs = ref.xy[:n_ref]
    z = bright[:, 0] + 1j * bright[:, 1]
    c = complex(*centre)
    w = refs[:, 0] + 1j * refs[:, 1]
    n_cells = int(math.ceil(2.0 * max_shift / match_radius)) + 2
    best = (-1, 0.0, 1.0, 0j)
    for rot in rotations:
        for scale in scales:
            moved = scale * np.exp(1j * rot) * z + c
            off = (w[None, :] - moved[:, None]).ravel()
            off = off[np.abs(off) <= max_shift]
            if off.size < min_matches:
                continue
            ix = np.floor((off.real + max_shift) / match_radius).astype(np.int64) + 1
            iy = np.floor((off.imag + max_shift) / match_radius).astype(np.int64) + 1
            grid = np.bincount(iy * n_cells + ix, minlength=n_cells * n_cells).reshape(n_cells, n_cells)
            # a vote near a cell edge counts in the 2x2 block it falls in
            block = grid[:-1, :-1] + grid[1:, :-1] + grid[:-1, 1:] + grid[1:, 1:]
            k = int(np.argmax(block))
            if block.flat[k] > best[0]:
                by, bx = divmod(k, n_cells - 1)
                inside = (np.abs(ix - bx - 0.5) <= 0.5) & (np.abs(iy - by - 0.5) <= 0.5)
                shift = complex(np.median(off.real[inside]), np.median(off.imag[inside])) if inside.any() else 0j
                best = (int(block.flat[k]), rot, scale, shift)
    if best[0] < min_matches:
        return None
    _, rot, scale, shift = best
    a = scale * np.exp(1j * rot)
    t = c + shift - a * c
    verify_src = src_xy[: max(n_src, 60)]
    moved = a * (verify_src[:, 0] + 1j * verify_src[:, 1]) + t
    dist, _ = ref.tree.query(np.column_stack([moved.real, moved.imag]), distance_upper_bound=match_radius)
    count = int(np.isfinite(dist).sum())
    density = len(ref.xy) / max(ref.area, math.pi * match_radius**2)
    expected = len(verify_src) * density * math.pi * match_radius**2
    n_hyp = n_rot * n_scale * max(1, int(round((max_shift / match_radius) ** 2)))
    false_alarms = n_hyp * float(poisson.sf(count - 1, expected))
    if count < min_matches or false_alarms > false_alarm_rate:
        log.debug("grid match: best (%.2f deg, scale %.4f) has %d matches (%.2f expected by chance, %.2g false alarms)",
                  math.degrees(rot), scale, count, expected, false_alarms)
        return None
    transform = Similarity(float(abs(a)), float(math.degrees(np.angle(a))), 1, float(t.real), float(t.imag))
    return _refined(src_xy, ref.xy, ref.tree, transform, match_radius, expected, n_hyp)
