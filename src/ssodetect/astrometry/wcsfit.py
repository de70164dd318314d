"""TAN + SIP WCS fitted to matched stars, per exposure or jointly over exposures.

Model, for exposure ``e`` of one CCD (pixel convention 0-based; FITS CRPIX is
1-based)::

    u, v    = x - (CRPIX1 - 1), y - (CRPIX2 - 1)
    (xi, eta) = CD_e @ (u + A(u, v), v + B(u, v))        # standard coordinates [deg]
    (ra, dec) = gnomonic de-projection about CRVAL_e

``A, B`` are SIP polynomials of total order 2..``order``.  The fit is linear:
``xi`` and ``eta`` are polynomials of ``(u, v)`` whose constant terms move the
tangent point (iterated until they vanish), whose linear terms are ``CD`` and
whose higher terms are ``CD @ (A, B)``.  A *joint* fit over the exposures of one
CCD shares the polynomial terms (the optics and the detector do not change
between dithers) and gives each exposure its own tangent point and ``CD``
(pointing, rotation, scale): the same idea as SCAMP's.  Stars are weighted by
their centroid and catalogue errors and sigma-clipped.  The inverse polynomials
(``AP, BP``) are fitted on a grid so that ``world -> pixel`` is exact to
< 1e-3 px.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from astropy.wcs import WCS, Sip

from ssodetect.astrometry.tangent import TangentPlane

__all__ = ["MatchedStars", "WCSSolution", "fit_wcs", "polynomial_terms", "max_order_for"]

log = logging.getLogger(__name__)

_DEG_TO_ARCSEC = 3600.0


@dataclass
class MatchedStars:
    """Detections matched to reference stars, for one exposure of one CCD.

    Attributes
    ----------
    x, y : ndarray (n,)
        0-based pixel positions.
    ra, dec : ndarray (n,)
        Reference positions at the exposure epoch [deg].
    sigma : ndarray (n,)
        Per-star positional uncertainty (centroid and catalogue combined) [arcsec].
    crval : (float, float)
        Starting tangent point [deg] (e.g. the header's CRVAL corrected by the match).
    """

    x: np.ndarray
    y: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    sigma: np.ndarray
    crval: tuple[float, float]


@dataclass
class WCSSolution:
    """A fitted WCS and its quality.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        TAN (order 1) or TAN-SIP with forward and inverse polynomials.
    n_stars : int
        Stars used after clipping.
    n_rejected : int
        Stars clipped.
    rms_ra, rms_dec : float
        Per-axis rms of the residuals of the stars used [arcsec] (RA includes cos dec).
    sip_order : int
        Polynomial order fitted (1 = linear TAN).
    n_params : int
        Free parameters per axis that this exposure's solution depends on.
    residuals : ndarray (n, 2)
        Residuals of all input stars, (RA*cos dec, Dec) [arcsec] (clipped ones included).
    used : ndarray (n,) bool
        Stars kept by the clipping.
    leverage : ndarray (n,)
        Diagonal of the hat matrix for the stars used (0 for clipped ones): a
        star's leave-one-out residual is its residual / (1 - leverage).
    """

    wcs: WCS
    n_stars: int
    n_rejected: int
    rms_ra: float
    rms_dec: float
    sip_order: int
    n_params: int
    residuals: np.ndarray = field(repr=False)
    used: np.ndarray = field(repr=False)
    leverage: np.ndarray = field(repr=False, default=None)

    @property
    def rms(self) -> float:
        """Total rms [arcsec]: sqrt(rms_ra^2 + rms_dec^2)."""
        return float(math.hypot(self.rms_ra, self.rms_dec))

    @property
    def position_error(self) -> float:
        """Typical per-axis error of the solution itself at a point of the CCD [arcsec].

        ``rms * sqrt(p / (n - p))``: the scatter of the stars about the fit,
        scaled by how many parameters were estimated from how many stars.
        """
        per_axis = math.sqrt(0.5 * (self.rms_ra**2 + self.rms_dec**2))
        dof = max(self.n_stars - self.n_params, 1)
        return per_axis * math.sqrt(self.n_params / dof)


def polynomial_terms(order: int, min_total: int = 0) -> list[tuple[int, int]]:
    """Exponents ``(p, q)`` of ``u^p v^q`` with ``min_total <= p + q <= order``."""
    return [(p, t - p) for t in range(min_total, order + 1) for p in range(t, -1, -1)]


def max_order_for(n_stars: int, order: int, *, n_exposures: int = 1, stars_per_param: float = 2.0) -> int:
    """Highest polynomial order <= ``order`` that ``n_stars`` (per exposure) constrain well.

    Needs ``stars_per_param`` star measurements per free parameter of one axis, and as many distinct
    stars per parameter of one exposure's model (its 3 linear terms and the shared distortion): the
    exposures of a dithered sequence see the same stars a few arcseconds apart, so their copies do not
    constrain the distortion again (6 stars in each of 4 exposures fitted a 2nd-order distortion that
    was 1.1" wrong away from them, its claimed error 4 mas).  Returns 0 when even a linear solution
    (3 parameters) is not constrained.
    """
    for k in range(order, 0, -1):
        shared = len(polynomial_terms(k, 2))
        params = n_exposures * 3 + shared
        if n_stars * n_exposures >= stars_per_param * params and n_stars >= stars_per_param * (3 + shared):
            return k
    return 0


def _design(u: np.ndarray, v: np.ndarray, terms, norm: float) -> np.ndarray:
    un, vn = u / norm, v / norm
    return np.column_stack([un**p * vn**q for p, q in terms]) if terms else np.zeros((u.size, 0))


def fit_wcs(
    stars: list[MatchedStars],
    *,
    crpix: tuple[float, float],
    order: int = 3,
    clip: float = 3.0,
    max_iter: int = 6,
    norm: float | None = None,
    inverse_extent: tuple[float, float] | None = None,
) -> list[WCSSolution]:
    """Fit TAN(+SIP) WCSs, one per exposure, sharing the distortion terms.

    Parameters
    ----------
    stars : list of MatchedStars
        One entry per exposure of the same CCD (one entry: a single-exposure fit).
    crpix : (float, float)
        FITS (1-based) reference pixel shared by the exposures (e.g. the header's).
    order : int
        SIP order (1 = no distortion terms).
    clip : float
        Clipping threshold in robust standard deviations of the normalised residuals.
    max_iter : int
        Clip-and-refit rounds.
    norm : float, optional
        Polynomial normalisation length [px] (default: the largest ``|u|, |v|``).
    inverse_extent : (nx, ny), optional
        Image size over which the inverse SIP is fitted (default: the stars' extent).

    Returns
    -------
    list of WCSSolution
        In the order of ``stars``.

    Raises
    ------
    ValueError
        Fewer stars than free parameters.
    """
    n_exp = len(stars)
    cx, cy = crpix[0] - 1.0, crpix[1] - 1.0
    us = [np.asarray(s.x, float) - cx for s in stars]
    vs = [np.asarray(s.y, float) - cy for s in stars]
    if norm is None:
        norm = max(max(np.max(np.abs(u)) for u in us), max(np.max(np.abs(v)) for v in vs), 1.0)
    shared_terms = polynomial_terms(order, 2) if order >= 2 else []
    n_shared = len(shared_terms)
    n_par = 3 * n_exp + n_shared
    if sum(u.size for u in us) < n_par + 1:
        raise ValueError(f"{sum(u.size for u in us)} stars cannot constrain {n_par} parameters per axis")
    planes = [TangentPlane(*s.crval) for s in stars]
    used = [np.ones(u.size, bool) for u in us]
    weights = [1.0 / np.maximum(np.asarray(s.sigma, float), 1e-4) for s in stars]
    lin_terms = polynomial_terms(1, 0)  # 1, u, v
    coef_xi = coef_eta = None
    freeze = False  # after max_iter clipping rounds: one last fit with the final star set, no more clipping
    for iteration in range(max_iter + 12):
        # project the reference stars about each exposure's current tangent point [arcsec]
        proj = [p.to_plane(s.ra, s.dec) for p, s in zip(planes, stars)]
        rows_x, rows_y, wts, blocks = [], [], [], []
        for e in range(n_exp):
            m = used[e]
            d_lin = _design(us[e][m], vs[e][m], lin_terms, norm)
            block = np.zeros((m.sum(), n_par))
            block[:, 3 * e : 3 * e + 3] = d_lin
            if n_shared:
                block[:, 3 * n_exp :] = _design(us[e][m], vs[e][m], shared_terms, norm)
            blocks.append(block)
            rows_x.append(proj[e][0][m])
            rows_y.append(proj[e][1][m])
            wts.append(weights[e][m])
        design = np.vstack(blocks)
        w = np.concatenate(wts)
        dw = design * w[:, None]
        coef_xi = np.linalg.lstsq(dw, np.concatenate(rows_x) * w, rcond=None)[0]
        coef_eta = np.linalg.lstsq(dw, np.concatenate(rows_y) * w, rcond=None)[0]
        # move each tangent point to the fitted constant term, then refit
        moved = 0.0
        for e in range(n_exp):
            c0x, c0y = coef_xi[3 * e], coef_eta[3 * e]
            moved = max(moved, math.hypot(c0x, c0y))
            ra0, dec0 = planes[e].to_sky(np.array([c0x]), np.array([c0y]))
            planes[e] = TangentPlane(float(ra0[0]), float(dec0[0]))
        if moved > 1e-6:
            continue
        if freeze:
            break
        # residuals of all stars, normalised by their errors; clip
        changed = False
        for e in range(n_exp):
            res = _residuals(coef_xi, coef_eta, e, n_exp, us[e], vs[e], proj[e], shared_terms, norm)
            r = np.hypot(res[:, 0], res[:, 1]) * weights[e]
            # 2-D normalised offsets follow a Rayleigh law: median = 1.1774 sigma; never clip below
            # the stated errors (sigma 1), or a too flexible model would clip good stars
            sig = max(float(np.median(r[used[e]])) / 1.1774, 1.0)
            new = r < clip * sig
            if new.sum() >= 3 and not np.array_equal(new, used[e]):
                used[e] = new
                changed = True
        if not changed:
            break
        freeze = iteration >= max_iter
    # leverage of each used star (diagonal of the hat matrix of the weighted design)
    q, _ = np.linalg.qr(dw)
    hat = np.sum(q**2, axis=1)
    bounds = np.cumsum([0] + [int(m.sum()) for m in used])
    solutions = []
    for e in range(n_exp):
        leverage = np.zeros(us[e].size)
        leverage[used[e]] = hat[bounds[e] : bounds[e + 1]]
        res = _residuals(coef_xi, coef_eta, e, n_exp, us[e], vs[e], planes[e].to_plane(stars[e].ra, stars[e].dec),
                         shared_terms, norm)
        # convert residuals from the tangent plane [arcsec] to (RA cos dec, Dec): equal near the tangent point
        m = used[e]
        wcs = _to_wcs(planes[e], crpix, coef_xi, coef_eta, e, n_exp, shared_terms, norm, order, us[e], vs[e],
                      inverse_extent)
        solutions.append(
            WCSSolution(
                wcs=wcs,
                n_stars=int(m.sum()),
                n_rejected=int((~m).sum()),
                rms_ra=float(np.sqrt(np.mean(res[m, 0] ** 2))),
                rms_dec=float(np.sqrt(np.mean(res[m, 1] ** 2))),
                sip_order=order if n_shared else 1,
                n_params=3 + n_shared,
                residuals=res,
                used=m,
                leverage=leverage,
            )
        )
    return solutions


def _residuals(coef_xi, coef_eta, e, n_exp, u, v, proj, shared_terms, norm) -> np.ndarray:
    lin = _design(u, v, polynomial_terms(1, 0), norm)
    mx = lin @ coef_xi[3 * e : 3 * e + 3]
    my = lin @ coef_eta[3 * e : 3 * e + 3]
    if shared_terms:
        d = _design(u, v, shared_terms, norm)
        mx = mx + d @ coef_xi[3 * n_exp :]
        my = my + d @ coef_eta[3 * n_exp :]
    return np.column_stack([proj[0] - mx, proj[1] - my])


def _to_wcs(plane, crpix, coef_xi, coef_eta, e, n_exp, shared_terms, norm, order, u, v, extent) -> WCS:
    """Build an astropy WCS from the fitted polynomial coefficients (arcsec, normalised pixels)."""
    cd = np.array(
        [[coef_xi[3 * e + 1], coef_xi[3 * e + 2]], [coef_eta[3 * e + 1], coef_eta[3 * e + 2]]]
    ) / (norm * _DEG_TO_ARCSEC)
    w = WCS(naxis=2)
    w.wcs.crpix = list(crpix)
    w.wcs.crval = [plane.ra0, plane.dec0]
    w.wcs.cd = cd
    w.wcs.radesys = "ICRS"
    if not shared_terms:
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.set()
        return w
    cd_inv = np.linalg.inv(cd)
    a = np.zeros((order + 1, order + 1))
    b = np.zeros((order + 1, order + 1))
    for k, (p, q) in enumerate(shared_terms):
        hx = coef_xi[3 * n_exp + k] / _DEG_TO_ARCSEC / norm ** (p + q)
        hy = coef_eta[3 * n_exp + k] / _DEG_TO_ARCSEC / norm ** (p + q)
        a[p, q], b[p, q] = cd_inv @ np.array([hx, hy])
    if extent is not None:
        gx, gy = np.meshgrid(np.linspace(0, extent[0] - 1, 24), np.linspace(0, extent[1] - 1, 24))
        gu, gv = gx.ravel() - (crpix[0] - 1), gy.ravel() - (crpix[1] - 1)
    else:
        gu = np.linspace(u.min(), u.max(), 24)
        gv = np.linspace(v.min(), v.max(), 24)
        gu, gv = (g.ravel() for g in np.meshgrid(gu, gv))
    ap, bp = _inverse_sip(a, b, gu, gv, order + 1)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.sip = Sip(a, b, ap, bp, list(crpix))
    w.wcs.set()
    return w


def _sip_eval(coef: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    out = np.zeros_like(u)
    n = coef.shape[0]
    for p in range(n):
        for q in range(n - p):
            if coef[p, q]:
                out += coef[p, q] * u**p * v**q
    return out


def _inverse_sip(a, b, u, v, order: int) -> tuple[np.ndarray, np.ndarray]:
    """AP, BP so that ``u = U + AP(U, V)`` with ``U = u + A(u, v)``, least squares on the grid."""
    big_u = u + _sip_eval(a, u, v)
    big_v = v + _sip_eval(b, u, v)
    terms = polynomial_terms(order, 1)
    norm = max(np.max(np.abs(big_u)), np.max(np.abs(big_v)), 1.0)
    d = _design(big_u, big_v, terms, norm)
    cu = np.linalg.lstsq(d, u - big_u, rcond=None)[0]
    cv = np.linalg.lstsq(d, v - big_v, rcond=None)[0]
    ap = np.zeros((order + 1, order + 1))
    bp = np.zeros((order + 1, order + 1))
    for k, (p, q) in enumerate(terms):
        ap[p, q] = cu[k] / norm ** (p + q)
        bp[p, q] = cv[k] / norm ** (p + q)
    return ap, bp
