"""Numba kernels of :func:`ssodetect.streaks.detect.collinear_chains` (its numpy twin:
:func:`~ssodetect.streaks.detect._collinear_chains_reference`).

The Hough votes are counted as the reference counts them (the same floating-point operations in the same order, and
no ``fastmath``: no fused multiply-add, so every point falls in the same cell) and kept as lists of the points of each
cell, in index order.  :func:`next_cell`
then goes through the cells in the reference's order and does each cell's work on the points of a few cells instead
of on all of them: the points within ``band`` of a line lie in the cells of the nearest Hough angle whose range of
``rho`` the line's band can reach.  The reference takes each line's direction from an SVD (LAPACK), whose last bits
and whose sign no closed form reproduces; the kernel uses the principal axis of the 2x2 scatter matrix and a bound on
how far the two directions can differ (the eigenvector's perturbation bound: a few ``eps`` times the matrix's trace
over its eigenvalue gap, infinite for points all alike).  A cell whose outcome that difference cannot change and that
yields no run is passed over; the kernel stops at every other cell (one that may yield a run, a point within the
bound of the band's edge, a gap or a span within it of its threshold, a direction that is not well defined) and hands
back its points, which :func:`~ssodetect.streaks.detect.collinear_chains` measures with the reference's own numpy and
LAPACK calls.  Only cells that yield no run are decided here, and they change nothing (no point is used): the runs,
their order and their members are those of the reference.
"""
from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["hough_cells", "next_cell", "line_candidates"]

_EPS = 2.220446049250313e-16


@numba.njit(cache=True, nogil=True)
def hough_cells(x, y, cos_h, sin_h, width):  # pragma: no cover - compiled
    """Hough votes of the points: ``(counts, start, idx, offset, n_bins)``.

    Cell ``a * n_bins + b`` (angle ``a``, bin ``b = floor((x cos_h[a] + y sin_h[a] - offset) / width)``, ``offset``
    the smallest ``rho``) holds the points ``idx[start[cell]:start[cell + 1]]`` in increasing order; ``counts`` its
    number of points (int64, as ``np.bincount``'s).
    """
    n = x.size
    na = cos_h.size
    offset, top = np.inf, -np.inf
    for a in range(na):
        c, s = cos_h[a], sin_h[a]
        for j in range(n):
            r = x[j] * c + y[j] * s
            offset = min(offset, r)
            top = max(top, r)
    n_bins = int(math.floor((top - offset) / width)) + 1  # the largest bin: rounding is monotonic
    bins = np.empty(na * n, np.int32)
    counts = np.zeros(na * n_bins, np.int64)
    for a in range(na):
        c, s = cos_h[a], sin_h[a]
        for j in range(n):
            b = int(math.floor((x[j] * c + y[j] * s - offset) / width))
            bins[a * n + j] = b
            counts[a * n_bins + b] += 1
    start = np.zeros(na * n_bins + 1, np.int64)
    for f in range(na * n_bins):
        start[f + 1] = start[f] + counts[f]
    idx = bins  # angle a's points fill idx[a n:(a + 1) n], where their bins were (copied first)
    row = np.empty(n, np.int32)
    fill = np.empty(n_bins, np.int64)
    for a in range(na):
        for j in range(n):
            row[j] = bins[a * n + j]
        for b in range(n_bins):
            fill[b] = start[a * n_bins + b]
        for j in range(n):
            b = row[j]
            idx[fill[b]] = j
            fill[b] += 1
    return counts, start, idx, offset, n_bins


@numba.njit(cache=True, nogil=True)
def _bin_range(c, s, r0, w, a, cos_h, sin_h, par, n_bins):  # pragma: no cover - compiled
    """The bins of Hough angle ``a`` that hold every point of the bounding box within ``w`` of the line
    ``x c + y s = r0`` (``(lo, hi)``, empty when ``lo > hi``)."""
    offset, width, scale = par[0], par[1], par[5]
    xmin, xmax, ymin, ymax = par[6], par[7], par[8], par[9]
    ca, sa = cos_h[a], sin_h[a]
    # a point p = u n + t t (n = (c, s), t = (-s, c)): rho_a = u (n . n_a) + t (t . n_a), u in r0 +- w, t over the box
    along = c * ca + s * sa
    across = -s * ca + c * sa
    ta, tb, tc, td = -s * xmin + c * ymin, -s * xmax + c * ymin, -s * xmin + c * ymax, -s * xmax + c * ymax
    t0, t1 = min(min(ta, tb), min(tc, td)), max(max(ta, tb), max(tc, td))
    margin = 1e-6 * (1.0 + scale)
    lo = min((r0 - w) * along, (r0 + w) * along) + min(t0 * across, t1 * across) - margin
    hi = max((r0 - w) * along, (r0 + w) * along) + max(t0 * across, t1 * across) + margin
    b0 = int(math.floor(min(max((lo - offset) / width, 0.0), float(n_bins))))
    b1 = int(math.floor(min(max((hi - offset) / width, -1.0), n_bins - 1.0)))
    return b0, max(b1, b0 - 1)


@numba.njit(cache=True, nogil=True)
def _nearest_angle(theta, n_angles):  # pragma: no cover - compiled
    k = int(math.floor(theta * (180.0 / math.pi) + 0.5)) % n_angles
    return k + n_angles if k < 0 else k


@numba.njit(cache=True, nogil=True)
def line_candidates(c, s, r0, w, cos_h, sin_h, start, idx, par, n_bins):  # pragma: no cover - compiled
    """Indices (increasing, int64) of a superset of the points within ``w`` of the line ``x c + y s = r0``."""
    a = _nearest_angle(math.atan2(s, c), cos_h.size)
    b0, b1 = _bin_range(c, s, r0, w, a, cos_h, sin_h, par, n_bins)
    first = a * n_bins
    total = 0
    for b in range(b0, b1 + 1):
        total += start[first + b + 1] - start[first + b]
    out = np.empty(max(total, 0), np.int64)
    k = 0
    for b in range(b0, b1 + 1):
        for q in range(start[first + b], start[first + b + 1]):
            out[k] = idx[q]
            k += 1
    _sort(out, total)
    return out


#: Shell sort gaps (Ciura's, then x2.25).
_GAPS = np.array([1, 4, 10, 23, 57, 132, 301, 701, 1577, 3548, 7983, 17961, 40412, 90927, 204585, 460316, 1035711,
                  2330349, 5243285], np.int64)


@numba.njit(cache=True, nogil=True)
def _sort(values, m):  # pragma: no cover - compiled
    """Sorts ``values[:m]`` in place: a Shell sort, an insertion sort for the few points of most lines (and far
    quicker to compile than numba's quicksort)."""
    for g in range(_GAPS.size - 1, -1, -1):
        gap = _GAPS[g]
        if gap >= m:
            continue
        for i in range(gap, m):
            v = values[i]
            k = i - gap
            while k >= 0 and values[k] > v:
                values[k + gap] = values[k]
                k -= gap
            values[k + gap] = v


@numba.njit(cache=True, nogil=True)
def _median(values, m):  # pragma: no cover - compiled
    """``np.median`` of ``values[:m]`` (the mean of the two middle values for an even count); sorts them in place."""
    _sort(values, m)
    v = values
    h = m // 2
    if m % 2:
        return v[h]
    return (v[h - 1] + v[h]) / 2.0


@numba.njit(cache=True, nogil=True)
def _normal(x, y, mem, m, scale):  # pragma: no cover - compiled
    """Angle [rad] of the normal of the principal axis of the points ``mem[:m]`` and a bound on its difference
    (modulo pi) from the reference's (SVD) angle; the bound is infinite when the direction is ill defined."""
    sx, sy = 0.0, 0.0
    for i in range(m):
        sx += x[mem[i]]
        sy += y[mem[i]]
    mx, my = sx / m, sy / m
    a, b, d = 0.0, 0.0, 0.0
    for i in range(m):
        dx, dy = x[mem[i]] - mx, y[mem[i]] - my
        a += dx * dx
        b += dx * dy
        d += dy * dy
    half_gap = math.hypot(0.5 * (a - d), b)
    # what rounding (this sum, the SVD's backward error, either mean's) can change in the scatter matrix
    err = 64.0 * (m + 2) * _EPS * (a + d) + 16.0 * m * m * m * (_EPS * scale) ** 2
    if not half_gap > 4.0 * err:
        return 0.0, np.inf
    return 0.5 * math.atan2(2.0 * b, a - d) + 0.5 * math.pi, err / half_gap + 16.0 * _EPS


@numba.njit(cache=True, nogil=True)
def _handed(k, m1, n1, m2, n2):  # pragma: no cover - compiled
    _sort(m1, n1)
    _sort(m2, n2)
    return k, n1, n2, True


@numba.njit(cache=True, nogil=True)
def next_cell(x, y, used, cells, pos, n_bins, cos_h, sin_h, cos_r, sin_r, start, idx, par, m1, m2):  # pragma: no cover
    """The first cell from ``cells[pos]`` on that the reference may turn into runs or that the kernel cannot decide.

    ``par``: ``offset, width, band, max_gap, min_span, scale, xmin, xmax, ymin, ymax, min_points`` (``scale`` the
    largest ``|x| + |y|``).  Returns ``(k, n1, n2, m2_exact)``: ``k`` the cell's position in ``cells``
    (``cells.size`` when none is left), ``m1[:n1]`` the points collected by the first refinement (as the reference's,
    increasing), and when ``m2_exact``, ``m2[:n2]`` those of the second (exactly the reference's, increasing).
    """
    band, max_gap, min_span, scale = par[2], par[3], par[4], par[5]
    min_points = int(par[10])
    n = x.size
    values = np.empty(n)
    mark = np.empty(n, np.int64)
    for j in range(n):
        mark[j] = -1
    margin = 1e-6 * (1.0 + scale)
    for k in range(pos, cells.size):
        cell = cells[k]
        a = cell // n_bins
        # the cell's unused points (m2 as scratch)
        n0 = 0
        for q in range(start[cell], start[cell + 1]):
            j = idx[q]
            if not used[j]:
                m2[n0] = j
                n0 += 1
        if n0 < min_points:
            continue
        c, s = cos_r[a], sin_r[a]
        for i in range(n0):
            values[i] = x[m2[i]] * c + y[m2[i]] * s
        r0 = _median(values, n0)
        # first refinement on the Hough angle itself: exact
        b0, b1 = _bin_range(c, s, r0, band + margin, a, cos_h, sin_h, par, n_bins)
        n1 = 0
        for q in range(start[a * n_bins + b0], start[a * n_bins + b1 + 1]):
            j = idx[q]
            if not used[j] and abs(x[j] * c + y[j] * s - r0) <= band:
                m1[n1] = j
                n1 += 1
                mark[j] = k
        if n1 < min_points:
            continue
        theta, delta = _normal(x, y, m1, n1, scale)
        if not delta < 1e-7:
            _sort(m1, n1)
            return k, n1, 0, False
        # second refinement: the line differs from the reference's by at most ``tol`` within the points' box
        c, s = math.cos(theta), math.sin(theta)
        for i in range(n1):
            values[i] = x[m1[i]] * c + y[m1[i]] * s
        r0 = _median(values, n1)
        tol = 8.0 * scale * (delta + 32.0 * _EPS) + 1e-12
        a2 = _nearest_angle(theta, cos_h.size)
        b0, b1 = _bin_range(c, s, r0, band + tol + margin, a2, cos_h, sin_h, par, n_bins)
        n2 = 0
        kept = 0  # of the first refinement's points
        near_edge = False
        for q in range(start[a2 * n_bins + b0], start[a2 * n_bins + b1 + 1]):
            j = idx[q]
            if used[j]:
                continue
            dist = abs(x[j] * c + y[j] * s - r0)
            if abs(dist - band) <= tol:
                near_edge = True
                break
            if dist <= band:
                m2[n2] = j
                n2 += 1
                kept += mark[j] == k
        if near_edge:
            _sort(m1, n1)
            return k, n1, 0, False
        if n2 < min_points:
            continue
        if kept < n1 or n2 > n1:  # (the same points: the same line)
            theta, delta = _normal(x, y, m2, n2, scale)
            if not delta < 1e-7:
                return _handed(k, m1, n1, m2, n2)
        tol = 8.0 * scale * (delta + 32.0 * _EPS) + 1e-12
        c, s = math.cos(theta), math.sin(theta)
        for i in range(n2):
            values[i] = -x[m2[i]] * s + y[m2[i]] * c
        _sort(values, n2)
        along = values
        # runs between gaps (the reference's, reversed when its direction is the opposite one)
        first = 0
        for i in range(1, n2 + 1):
            if i < n2:
                step = along[i] - along[i - 1]
                if abs(step - max_gap) <= tol:
                    return _handed(k, m1, n1, m2, n2)
                if step <= max_gap:
                    continue
            if i - first >= min_points and along[i - 1] - along[first] >= min_span - tol:
                return _handed(k, m1, n1, m2, n2)
            first = i
    return cells.size, 0, 0, False
