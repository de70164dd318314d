"""Trailed-source measurement: modified moments and a trailed-PSF model fit.

A source moving uniformly during the exposure draws a Gaussian PSF (sigma
``s``) convolved with a line segment of length ``L`` at angle ``theta``
(radians from +x towards +y).  With ``u`` the coordinate along the trail from
its centre and ``w`` across it::

    I(u, w) = F / L * [Phi((u + L/2) / s) - Phi((u - L/2) / s)] * exp(-w^2 / 2 s^2) / (sqrt(2 pi) s) + B

evaluated at pixel centres with ``s^2 = sigma_psf^2 + 1/12`` (pixel
integration of an undersampled PSF, to first order).  The centre of the trail
is the position at mid-exposure.  Pixel convention: 0-based, images ``[y, x]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from scipy.optimize import least_squares
from scipy.special import ndtr

__all__ = ["TrailFit", "trailed_psf", "fit_trail", "fit_trail_reference", "moment_centre", "scan_trail_ends", "trail_cost",
           "trail_on_sky", "centre_bound", "section_amplitudes"]


def trailed_psf(x, y, xc, yc, length, theta, flux, sigma) -> np.ndarray:
    """Trailed-PSF intensity at pixel centres ``(x, y)`` [ADU per pixel] (no background)."""
    ct, st = math.cos(theta), math.sin(theta)
    dx, dy = x - xc, y - yc
    u = dx * ct + dy * st
    w = -dx * st + dy * ct
    s = math.sqrt(sigma**2 + 1.0 / 12.0)
    half = 0.5 * max(length, 1e-3)
    along = (ndtr((u + half) / s) - ndtr((u - half) / s)) / (2.0 * half)
    across = np.exp(-0.5 * (w / s) ** 2) / (math.sqrt(2.0 * math.pi) * s)
    return flux * along * across


@dataclass
class TrailFit:
    """Result of :func:`fit_trail` (positions 0-based px, angle in radians from +x towards +y).

    ``x_err, y_err, length_err, theta_err, flux_err`` are 1-sigma from the
    Jacobian at the solution, scaled by sqrt(reduced chi2) when it exceeds 1.
    """

    x: float
    y: float
    length: float
    theta: float
    flux: float
    background: float
    x_err: float
    y_err: float
    along_err: float
    across_err: float
    length_err: float
    theta_err: float
    flux_err: float
    chi2_dof: float
    success: bool


def moment_centre(data: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int], noise: float) -> tuple[float, float]:
    """Modified-moment centre: first moments of the pixels above 2 noise in a box, background clipped.

    Parameters
    ----------
    data : ndarray (ny, nx)
        Background-subtracted image.
    mask : ndarray (ny, nx) bool
    box : (x0, x1, y0, y1)
        Pixel bounds (inclusive start, exclusive end), already expanded by a margin.
    noise : float
        Background noise per pixel [ADU].
    """
    x0, x1, y0, y1 = box
    stamp = data[y0:y1, x0:x1].astype(np.float64)
    good = ~mask[y0:y1, x0:x1] & (stamp > 2.0 * noise)
    if not good.any():
        return float("nan"), float("nan")
    yy, xx = np.mgrid[y0:y1, x0:x1]
    w = np.where(good, stamp, 0.0)
    total = w.sum()
    return float((w * xx).sum() / total), float((w * yy).sum() / total)


#: Soft-L1 loss scale of the trail fit [noise sigmas]: quadratic within ~3 sigma, linear beyond, so unmasked
#: outliers in a long stamp (a star, a faint cosmic ray) do not drag the fit while clean data are fitted as
#: by least squares.
F_SCALE = 3.0
#: Model evaluations allowed per fit.
MAX_NFEV = 300
_SQRT2 = math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _stamp(data, variance, mask, x0, y0, length0, theta0, sigma, margin):
    """Pixels of the fit: those within a rotated rectangle around the first guess, unmasked and finite.

    Returns ``(xs, ys, values, weights)`` (float64 (m,): pixel centres [px], values [ADU], 1/noise).
    """
    ny, nx = data.shape
    ct, st = math.cos(theta0), math.sin(theta0)
    half = 0.5 * length0 + margin * sigma + 3.0
    ex = abs(half * ct) + margin * sigma + 3.0
    ey = abs(half * st) + margin * sigma + 3.0
    xa, xb = max(int(math.floor(x0 - ex)), 0), min(int(math.ceil(x0 + ex)) + 1, nx)
    ya, yb = max(int(math.floor(y0 - ey)), 0), min(int(math.ceil(y0 + ey)) + 1, ny)
    yy, xx = np.mgrid[ya:yb, xa:xb]
    stamp = data[ya:yb, xa:xb].astype(np.float64)
    var = variance[ya:yb, xa:xb].astype(np.float64)
    good = ~mask[ya:yb, xa:xb] & np.isfinite(stamp) & (var > 0)
    du, dw = (xx - x0) * ct + (yy - y0) * st, -(xx - x0) * st + (yy - y0) * ct
    good &= (np.abs(du) <= half) & (np.abs(dw) <= margin * sigma + 3.0)
    return xx[good].astype(float), yy[good].astype(float), stamp[good], 1.0 / np.sqrt(var[good])


def _result(p, fun, jac, success, shape) -> TrailFit:
    """A :class:`TrailFit` from the solution ``p`` (6,), its weighted residuals ``fun`` (m,) and the
    loss-scaled Jacobian ``jac`` (m, 6) (``J^T J`` the Gauss-Newton Hessian of the robust cost)."""
    ny, nx = shape
    dof = max(fun.size - 6, 1)
    chi2 = float(np.sum(fun**2)) / dof
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a near-singular Hessian: no errors, the fit refused
            cov = np.linalg.inv(jac.T @ jac) * max(chi2, 1.0)
        if not np.all(np.isfinite(cov)):
            raise np.linalg.LinAlgError("singular")
        err = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        cov = np.full((6, 6), np.nan)
        err = np.full(6, np.nan)
    theta = float(p[3])
    length = float(abs(p[2]))
    # along/across-track position errors from the (x, y) covariance
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, s], [-s, c]])
    cov_uv = rot @ cov[:2, :2] @ rot.T
    ok = bool(success) and np.all(np.isfinite(err)) and err[4] > 0 and 0 <= p[0] < nx and 0 <= p[1] < ny and p[4] > 0
    theta = (theta + math.pi / 2) % math.pi - math.pi / 2
    return TrailFit(
        x=float(p[0]), y=float(p[1]), length=length, theta=theta, flux=float(p[4]), background=float(p[5]),
        x_err=float(err[0]), y_err=float(err[1]),
        along_err=float(math.sqrt(max(cov_uv[0, 0], 0.0))), across_err=float(math.sqrt(max(cov_uv[1, 1], 0.0))),
        length_err=float(err[2]), theta_err=float(err[3]), flux_err=float(err[4]), chi2_dof=chi2, success=ok,
    )


def _failed(x0, y0, length0, theta0) -> TrailFit:
    nan = float("nan")
    return TrailFit(x0, y0, length0, theta0, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, False)


@numba.njit(cache=True, nogil=True)
def _model_jac_nb(xs, ys, vs, ws, p, sigma, res, jac):  # pragma: no cover - compiled
    """Weighted residuals ``(model - value) * weight`` (m,) and their Jacobian (m, 6) at ``p``."""
    xc, yc, length, theta, flux, bkg = p[0], p[1], p[2], p[3], p[4], p[5]
    ct, st = math.cos(theta), math.sin(theta)
    s = math.sqrt(sigma * sigma + 1.0 / 12.0)
    half = 0.5 * max(length, 1e-3)
    free_length = 1.0 if length > 1e-3 else 0.0
    for q in range(xs.shape[0]):
        dx, dy = xs[q] - xc, ys[q] - yc
        u = dx * ct + dy * st
        w = -dx * st + dy * ct
        a1, a2 = (u + half) / s, (u - half) / s
        # Phi(a1) - Phi(a2) from the tail that keeps its precision
        if a2 > 0.0:
            big_a = 0.5 * (math.erfc(a2 / _SQRT2) - math.erfc(a1 / _SQRT2))
        elif a1 < 0.0:
            big_a = 0.5 * (math.erfc(-a1 / _SQRT2) - math.erfc(-a2 / _SQRT2))
        else:
            big_a = 1.0 - 0.5 * math.erfc(a1 / _SQRT2) - 0.5 * math.erfc(-a2 / _SQRT2)
        phi1 = math.exp(-0.5 * a1 * a1) * _INV_SQRT2PI
        phi2 = math.exp(-0.5 * a2 * a2) * _INV_SQRT2PI
        along = big_a / (2.0 * half)
        g = math.exp(-0.5 * (w / s) ** 2) * _INV_SQRT2PI / s
        d_along_du = (phi1 - phi2) / s / (2.0 * half)
        d_along_dh = (phi1 + phi2) / s / (2.0 * half) - big_a / (2.0 * half * half)
        dg_dw = -w / (s * s) * g
        wq = ws[q]
        res[q] = (flux * along * g + bkg - vs[q]) * wq
        jac[q, 0] = flux * (-ct * d_along_du * g + along * dg_dw * st) * wq
        jac[q, 1] = flux * (-st * d_along_du * g - along * dg_dw * ct) * wq
        jac[q, 2] = flux * g * d_along_dh * 0.5 * free_length * wq
        jac[q, 3] = flux * (w * d_along_du * g - along * dg_dw * u) * wq
        jac[q, 4] = along * g * wq
        jac[q, 5] = wq


@numba.njit(cache=True, nogil=True)
def _soft_l1_cost(res, f_scale):  # pragma: no cover - compiled
    total = 0.0
    for q in range(res.shape[0]):
        z = (res[q] / f_scale) ** 2
        total += 2.0 * (math.sqrt(1.0 + z) - 1.0)
    return 0.5 * f_scale * f_scale * total


@numba.njit(cache=True, nogil=True)
def _fit_trail_nb(xs, ys, vs, ws, p0, sigma, f_scale, max_nfev, ftol, xtol):  # pragma: no cover - compiled
    """Levenberg-Marquardt with Marquardt scaling on the soft-L1 cost (iteratively reweighted: each step
    solves the Gauss-Newton system with weights rho'(z) = 1/sqrt(1 + z)), analytic Jacobian.

    Returns ``(p, residuals, jacobian, converged)`` at the solution.
    """
    m = xs.shape[0]
    p = p0.copy()
    res = np.empty(m)
    jac = np.empty((m, 6))
    _model_jac_nb(xs, ys, vs, ws, p, sigma, res, jac)
    cost = _soft_l1_cost(res, f_scale)
    trial = np.empty(6)
    res_t = np.empty(m)
    jac_t = np.empty((m, 6))
    lam = 1e-3
    nfev = 1
    converged = False
    while nfev < max_nfev:
        a = np.zeros((6, 6))
        g = np.zeros(6)
        for q in range(m):
            rw = 1.0 / math.sqrt(1.0 + (res[q] / f_scale) ** 2)
            for i in range(6):
                ji = jac[q, i] * rw
                g[i] += ji * res[q]
                for k in range(i, 6):
                    a[i, k] += ji * jac[q, k]
        for i in range(6):
            for k in range(i):
                a[i, k] = a[k, i]
        if np.max(np.abs(g)) < 1e-8:
            converged = True
            break
        scale = np.empty(6)
        top = max(np.max(np.diag(a)), 1e-300)
        for i in range(6):
            scale[i] = max(a[i, i], 1e-12 * top)
        accepted = False
        while nfev < max_nfev:
            damped = a.copy()
            for i in range(6):
                damped[i, i] += lam * scale[i]
            step = np.linalg.solve(damped, -g)
            for i in range(6):
                trial[i] = p[i] + step[i]
            _model_jac_nb(xs, ys, vs, ws, trial, sigma, res_t, jac_t)
            nfev += 1
            cost_t = _soft_l1_cost(res_t, f_scale)
            if np.isfinite(cost_t) and cost_t < cost:
                small_f = cost - cost_t < ftol * cost
                small_x = np.sqrt(np.sum(step * step)) < xtol * (xtol + np.sqrt(np.sum(trial * trial)))
                p[:] = trial
                res[:] = res_t
                jac[:, :] = jac_t
                cost = cost_t
                lam = max(lam * 0.3, 1e-10)
                accepted = True
                converged = small_f or small_x
                break
            lam *= 10.0
            if lam > 1e12:
                break
        if converged or not accepted:
            # no step lowers the cost: a minimum to the solver's precision
            converged = converged or lam > 1e12
            break
    return p, res, jac, converged


def _loss_scaled_jacobian(res: np.ndarray, jac: np.ndarray) -> np.ndarray:
    """The Jacobian scaled as :func:`scipy.optimize.least_squares` reports it for the soft-L1 loss
    (``rho' + 2 z rho'' = (1 + z)^-1.5``), so that ``J^T J`` approximates the robust cost's Hessian."""
    z = (res / F_SCALE) ** 2
    return jac * np.sqrt(np.maximum((1.0 + z) ** -1.5, np.finfo(float).eps))[:, None]


def fit_trail(
    data: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    x0: float,
    y0: float,
    length0: float,
    theta0: float,
    sigma: float,
    *,
    margin: float = 4.0,
    start: TrailFit | None = None,
) -> TrailFit:
    """Least-squares trailed-PSF fit on a stamp around a first guess (numba kernel, analytic Jacobian).

    The cost is the soft-L1 loss of the noise-weighted residuals (scale :data:`F_SCALE`);
    :func:`fit_trail_reference` minimises the same with :func:`scipy.optimize.least_squares`.

    Parameters
    ----------
    data : ndarray (ny, nx)
        Background-subtracted image [ADU].
    variance : ndarray (ny, nx)
        Per-pixel variance [ADU^2] (background; source noise is added from the model).
    mask : ndarray (ny, nx) bool
    x0, y0, length0, theta0 : float
        First guess: centre [px], length [px], angle [rad].
    sigma : float
        PSF Gaussian sigma [px] (fixed).
    margin : float
        Stamp margin around the trail, in PSF sigmas plus 3 px.
    start : TrailFit, optional
        A converged fit to start from instead of the first guess (whose segment then only sets the stamp).
    """
    xs, ys, vs, ws = _stamp(data, variance, mask, x0, y0, length0, theta0, sigma, margin)
    if xs.size < 8:
        return _failed(x0, y0, length0, theta0)
    if start is not None:
        p0 = np.array([start.x, start.y, max(start.length, 0.5), start.theta, start.flux, start.background])
    else:
        p0 = np.array([x0, y0, max(length0, 0.5), theta0, max(float(vs.sum()), 1.0), 0.0])
    if not np.all(np.isfinite(p0)):
        return _failed(x0, y0, length0, theta0)
    p, res, jac, converged = _fit_trail_nb(xs, ys, vs, ws, p0, float(sigma), F_SCALE, MAX_NFEV, 1e-8, 1e-8)
    return _result(p, res, _loss_scaled_jacobian(res, jac), converged, data.shape)


def scan_trail_ends(
    data: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    x0: float,
    y0: float,
    theta: float,
    sigma: float,
    half: float,
    *,
    clip: float = 3.0,
) -> tuple[float, float, float, list[tuple[float, float]]]:
    """The ends of a trail along a known axis: the segment of highest matched-filter S/N.

    A trail fit started short of a faint trail's ends stays there: the cost changes little as the
    length grows over a few noisy pixels (a V~22.8 trail of 111 px started at 75 px converged at
    81-93 px with a claimed error of 1.5 px).  Here the pixels within ``3 s + 1`` px of the axis are
    collapsed, with the across-track profile as weights, into 1-px bins along it; every segment
    ``[a, b]`` of bins is then scored by the S/N of its summed amplitude (cumulative sums: all
    segments of ``n`` bins in ``O(n^2)``), whose maximum is where the mean density of the signal falls
    to about half of the trail's: its ends.  Bins brighter than the trail (the median amplitude of the
    middle half of the window) by half of it plus ``clip`` of their own errors hold another source (a star
    on the axis); they and ``2 s + 1`` bins either side are left out, so that such a source neither pulls an
    end onto itself nor breaks the trail, and an end past such a stretch with nothing significant beyond it is
    cut back to the stretch.  A stretch of ``4 s + 1`` bins inside the segment holding
    significantly less than its mean and nothing significant of its own is a gap between two sources on
    one line (bridging it costs little S/N): the search is repeated within the piece that holds the axis
    point (a faint trail was joined to a faint galaxy 25 px beyond its end).

    Parameters
    ----------
    data, variance : ndarray (ny, nx)
        Background-subtracted image [ADU] and its variance [ADU^2].
    mask : ndarray (ny, nx) bool
        Pixels not to use.
    x0, y0, theta : float
        A point on the axis [px] and its angle [rad from +x towards +y].
    sigma : float
        PSF Gaussian sigma [px].
    half : float
        Half-length of the window searched along the axis from ``(x0, y0)`` [px].
    clip : float
        How far above the trail [its errors, plus half the trail's amplitude] a bin holds another source.

    Returns
    -------
    a, b : float
        Ends along the axis from ``(x0, y0)`` [px], ``a < b``; NaN when the window holds no pixels.
    snr : float
        The segment's matched-filter S/N.
    blocked : list of (float, float)
        Intervals along the axis [px from ``(x0, y0)``] left out as another source's.
    """
    nan = float("nan")
    s = math.sqrt(sigma**2 + 1.0 / 12.0)
    du, vs, ws, profile = _along_axis(data, variance, mask, x0, y0, theta, sigma, half)
    if not du.size:
        return nan, nan, nan, []
    nbins = int(math.floor(2.0 * half)) + 1
    k = np.clip(np.floor(du + half).astype(np.int64), 0, nbins - 1)
    num = np.bincount(k, profile * vs * ws**2, nbins)  # amplitude x information per bin
    info = np.bincount(k, (profile * ws) ** 2, nbins)  # information (1 / amplitude variance) per bin
    seen = info > 0
    amp = np.divide(num, info, out=np.zeros(nbins), where=seen)
    centres = np.arange(nbins) + 0.5 - half
    middle = seen & (np.abs(centres) <= 0.25 * half)
    level = max(float(np.median(amp[middle])), 0.0) if middle.any() else 0.0
    other = seen & (amp > 1.5 * level + clip / np.sqrt(np.where(seen, info, 1.0)))
    reach = int(math.ceil(2.0 * s + 1.0))
    if other.any():
        other = np.convolve(other.astype(np.int64), np.ones(2 * reach + 1, np.int64), mode="same") > 0
        num[other], info[other] = 0.0, 0.0
    cum_num = np.concatenate([[0.0], np.cumsum(num)])
    cum_info = np.concatenate([[0.0], np.cumsum(info)])
    signal = cum_num[None, :] - cum_num[:, None]  # segment [i, j): bins i .. j-1
    noise2 = cum_info[None, :] - cum_info[:, None]
    edges = np.arange(nbins + 1)
    allowed = (noise2 > 0) & (edges[None, :] >= edges[:, None] + 2)
    span = int(math.ceil(4.0 * s)) + 1  # a gap is this many bins at least
    for _ in range(4):
        snr = np.full(signal.shape, -np.inf)
        np.divide(signal, np.sqrt(np.where(allowed, noise2, 1.0)), out=snr, where=allowed)
        i, j = np.unravel_index(int(np.argmax(snr)), snr.shape)
        if not np.isfinite(snr[i, j]):
            return nan, nan, nan, []
        if other.any():  # an end beyond another source's stretch with nothing significant past it: cut back
            inside = np.flatnonzero(other[i:j]) + i
            if inside.size:
                lo_run, hi_run = int(inside[0]), int(inside[-1]) + 1
                tail = noise2[hi_run, j]
                if j > hi_run and not (tail > 0 and signal[hi_run, j] > 3.0 * math.sqrt(tail)):
                    j = lo_run
                head = noise2[i, lo_run]
                if lo_run > i and not (head > 0 and signal[i, lo_run] > 3.0 * math.sqrt(head)):
                    i = hi_run
                if j - i < 2 or noise2[i, j] <= 0:
                    return nan, nan, nan, []
        # a stretch of ``span`` bins inside the segment with significantly less than the segment's mean and
        # nothing significant of its own separates two sources on one line (a gap bridged for free)
        mean = signal[i, j] / noise2[i, j]
        starts = np.arange(i, max(j - span, i) + 1)
        w_sig = cum_num[starts + span] - cum_num[starts] if j - i > span else np.zeros(0)
        w_inf = cum_info[starts + span] - cum_info[starts] if j - i > span else np.zeros(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            w_amp = w_sig / w_inf
            w_err = 1.0 / np.sqrt(w_inf)
        gap = (w_inf > 0) & (mean - w_amp > 4.0 * w_err) & (w_amp < 2.0 * w_err) & (w_amp < 0.3 * mean)
        if not gap.any():
            break
        # the pieces between gaps: keep the one holding the axis point, else the one of highest S/N
        cuts = starts[gap]
        bounds = np.concatenate([[i], cuts + span // 2, [j]])
        pieces = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi - lo >= 2]
        centre = int(math.floor(half))
        holding = [p for p in pieces if p[0] <= centre < p[1]]
        lo, hi = holding[0] if holding else max(pieces, key=lambda p: signal[p[0], p[1]] / math.sqrt(noise2[p[0], p[1]])
                                                                  if noise2[p[0], p[1]] > 0 else -np.inf)
        allowed &= (edges[:, None] >= lo) & (edges[None, :] <= hi)
    starts = np.flatnonzero(other & ~np.r_[False, other[:-1]])
    stops = np.flatnonzero(other & ~np.r_[other[1:], False])
    blocked = [(float(a0 - half), float(b0 + 1 - half)) for a0, b0 in zip(starts, stops)]
    return float(i - half), float(j - half), float(snr[i, j]), blocked


def _along_axis(data, variance, mask, x0: float, y0: float, theta: float, sigma: float, half: float):
    """The usable pixels within ``3 s + 1`` px of an axis (``s^2 = sigma^2 + 1/12``) and ``half`` px of ``(x0, y0)``
    along it: their coordinate along it [px], values [ADU], inverse noise and across-track profile weights."""
    s = math.sqrt(sigma**2 + 1.0 / 12.0)
    xs, ys, vs, ws = _stamp(data, variance, mask, x0, y0, 2.0 * half, theta, sigma, 3.0)
    ct, st = math.cos(theta), math.sin(theta)
    du = (xs - x0) * ct + (ys - y0) * st
    dw = -(xs - x0) * st + (ys - y0) * ct
    keep = (np.abs(dw) <= 3.0 * s + 1.0) & (np.abs(du) <= half)
    profile = np.exp(-0.5 * (dw[keep] / s) ** 2) * (_INV_SQRT2PI / s)
    return du[keep], vs[keep], ws[keep], profile


def section_amplitudes(data: np.ndarray, variance: np.ndarray, mask: np.ndarray, x0: float, y0: float, length: float,
                       theta: float, sigma: float, n_sections: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The light per unit length along a segment, in equal sections: a trail's density along its axis.

    The pixels within ``3 s + 1`` px of the axis (``s^2 = sigma^2 + 1/12``) are weighted by the
    across-track profile, as in :func:`scan_trail_ends`, and summed into ``n_sections`` equal sections of
    the segment ``[-length/2, length/2]`` along it: a uniform trail has the same amplitude in each.

    Parameters
    ----------
    data, variance, mask : ndarray (ny, nx)
        As for :func:`scan_trail_ends` (masked pixels are skipped).
    x0, y0, length, theta : float
        Segment centre [px, 0-based], length [px] and angle [rad from +x towards +y].
    sigma : float
        PSF Gaussian sigma [px].
    n_sections : int

    Returns
    -------
    amplitude, error : ndarray (n_sections,)
        Amplitude [ADU per px of length] and its 1-sigma error; NaN for a section without usable pixels.
    """
    n = max(int(n_sections), 1)
    amplitude, error = np.full(n, np.nan), np.full(n, np.nan)
    if not (length > 0 and np.isfinite(theta)):
        return amplitude, error
    du, vs, ws, profile = _along_axis(data, variance, mask, x0, y0, theta, sigma, 0.5 * length)
    keep = np.abs(du) < 0.5 * length
    du, vs, ws, profile = du[keep], vs[keep], ws[keep], profile[keep]
    k = np.clip(np.floor((du / length + 0.5) * n).astype(np.int64), 0, n - 1)
    num = np.bincount(k, profile * vs * ws**2, n)
    info = np.bincount(k, (profile * ws) ** 2, n)
    seen = info > 0
    amplitude[seen] = num[seen] / info[seen]
    error[seen] = 1.0 / np.sqrt(info[seen])
    return amplitude, error


def trail_cost(data, variance, mask, fit: TrailFit, x0: float, y0: float, length0: float, theta0: float, sigma: float,
               *, margin: float = 4.0) -> float:
    """The robust cost that :func:`fit_trail` minimises, of the model ``fit`` on the stamp that
    ``(x0, y0, length0, theta0)`` sets: two fits on one stamp compare by it (lower is better)."""
    xs, ys, vs, ws = _stamp(data, variance, mask, x0, y0, length0, theta0, sigma, margin)
    model = trailed_psf(xs, ys, fit.x, fit.y, fit.length, fit.theta, fit.flux, sigma) + fit.background
    z = ((model - vs) * ws / F_SCALE) ** 2
    return float(np.sum(2.0 * (np.sqrt(1.0 + z) - 1.0))) * F_SCALE**2


def fit_trail_reference(data, variance, mask, x0, y0, length0, theta0, sigma, *, margin: float = 4.0) -> TrailFit:
    """Reference twin of :func:`fit_trail`: :func:`scipy.optimize.least_squares` (trust-region reflective,
    Jacobian by finite differences) on the same stamp, model and loss; ~20x slower."""
    xs, ys, vs, ws = _stamp(data, variance, mask, x0, y0, length0, theta0, sigma, margin)
    if xs.size < 8:
        return _failed(x0, y0, length0, theta0)
    p0 = np.array([x0, y0, max(length0, 0.5), theta0, max(float(vs.sum()), 1.0), 0.0])

    def resid(p):
        return (trailed_psf(xs, ys, p[0], p[1], p[2], p[3], p[4], sigma) + p[5] - vs) * ws

    res = least_squares(resid, p0, method="trf", x_scale="jac", loss="soft_l1", f_scale=F_SCALE, max_nfev=MAX_NFEV)
    return _result(res.x, res.fun, res.jac, res.success, data.shape)


def trail_on_sky(wcs, x, y, length, theta) -> tuple[np.ndarray, np.ndarray]:
    """Trail length [arcsec] and position angle of its axis [deg, N through E, 0-180] through a WCS.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
    x, y, length, theta : ndarray (n,)
        Trail centres [px], lengths [px], angles [rad from +x towards +y].
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    h = 0.5 * np.asarray(length, float)
    c, s = np.cos(theta), np.sin(theta)
    ra1, dec1 = wcs.all_pix2world(x - h * c, y - h * s, 0)
    ra2, dec2 = wcs.all_pix2world(x + h * c, y + h * s, 0)
    dra = ((ra2 - ra1 + 180.0) % 360.0 - 180.0) * np.cos(np.radians(0.5 * (dec1 + dec2)))
    ddec = dec2 - dec1
    return np.hypot(dra, ddec) * 3600.0, np.degrees(np.arctan2(dra, ddec)) % 180.0


def centre_bound(shape, xc, yc, length, theta, flux, sigma, noise=1.0) -> tuple[float, float]:
    """Cramer-Rao bound on the trail centre, along and across the track [px].

    From the Fisher matrix of the six-parameter model (centre, length, angle,
    flux, background) on a stamp of ``shape`` (ny, nx) with white noise
    ``noise`` [ADU per pixel], by central differences.
    """
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    p = np.array([xc, yc, length, theta, flux, 0.0])
    steps = np.array([1e-3, 1e-3, 1e-3, 1e-5, flux * 1e-4, 1e-3])
    cols = []
    for k in range(6):
        hi, lo = p.copy(), p.copy()
        hi[k] += steps[k]
        lo[k] -= steps[k]
        diff = trailed_psf(xx, yy, *hi[:5], sigma) + hi[5] - trailed_psf(xx, yy, *lo[:5], sigma) - lo[5]
        cols.append((diff / (2 * steps[k])).ravel())
    jac = np.column_stack(cols) / noise
    cov = np.linalg.inv(jac.T @ jac)
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, s], [-s, c]])
    cov_uv = rot @ cov[:2, :2] @ rot.T
    return math.sqrt(cov_uv[0, 0]), math.sqrt(cov_uv[1, 1])
