"""Shift-and-stack search of difference images (KBMOD's likelihood, on the CPU).

For exposure ``e`` with difference image ``D_e`` and variance ``V_e`` (all on one pixel grid) and a
unit-sum PSF kernel ``K`` (a Gaussian, or a Gaussian swept along the trail a mover draws during
the exposure):

    psi_e = (D_e / V_e) * K        phi_e = (1 / V_e) * K^2        (* = correlation)

A mover starting at pixel ``(x, y)`` at the reference time with velocity ``(vx, vy)`` [px/h] sits
at ``(x + vx t_e, y + vy t_e)`` in exposure ``e``; its maximum-likelihood flux and significance are

    flux = sum_e psi_e / sum_e phi_e      nu = sum_e psi_e / sqrt(sum_e phi_e)

(positions rounded to the nearest pixel, as KBMOD does).  :func:`stack_best` keeps, for every start
pixel, the best ``nu`` over a block of velocities (numba, parallel over rows);
:func:`stack_best_reference` is the plain numpy twin the parity test compares it with.

Arrays are ``(ny, nx)``, 0-based, float32; times in hours from the reference time.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from scipy.signal import fftconvolve

__all__ = ["trail_kernel", "psi_phi", "velocity_grid", "stack_best", "stack_best_reference", "trajectory_terms"]


def trail_kernel(sigma: float, length: float = 0.0, angle: float = 0.0) -> np.ndarray:
    """Unit-sum kernel: a Gaussian PSF of ``sigma`` [px] swept along ``length`` [px] at ``angle``
    [rad from +x towards +y]; odd square shape."""
    half = int(math.ceil(4.0 * sigma + 0.5 * length)) + 1
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
    n = max(1, int(math.ceil(length / 0.25)))
    u = ((np.arange(n) + 0.5) / n - 0.5) * length
    k = np.zeros_like(xx)
    for du in u:
        k += np.exp(-0.5 * ((xx - du * math.cos(angle)) ** 2 + (yy - du * math.sin(angle)) ** 2) / sigma**2)
    return (k / k.sum()).astype(np.float64)


def psi_phi(diff: np.ndarray, var: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Likelihood images of one exposure; masked pixels (NaN in ``diff`` or ``var``) contribute nothing.

    Returns
    -------
    psi, phi : ndarray (ny, nx) float32
    """
    good = np.isfinite(diff) & np.isfinite(var) & (var > 0)
    w = np.where(good, 1.0 / np.where(good, var, 1.0), 0.0)
    d = np.where(good, diff, 0.0)
    flipped = kernel[::-1, ::-1]  # correlation
    psi = fftconvolve(d * w, flipped, mode="same")
    phi = fftconvolve(w, (kernel**2)[::-1, ::-1], mode="same")
    return psi.astype(np.float32), np.maximum(phi, 0.0).astype(np.float32)


def velocity_grid(rate_min: float, rate_max: float, step: float) -> np.ndarray:
    """Velocities (vx, vy) [px/h] on a square grid of ``step`` whose speed lies in [rate_min, rate_max] [px/h]."""
    n = int(math.ceil(rate_max / step))
    axis = np.arange(-n, n + 1) * step
    vx, vy = np.meshgrid(axis, axis)
    speed = np.hypot(vx, vy)
    keep = (speed >= rate_min) & (speed <= rate_max)
    return np.column_stack([vx[keep], vy[keep]])


def trajectory_terms(velocities: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixel offsets (n_v, n_exp) of each velocity at each time (nearest pixel)."""
    dx = np.rint(velocities[:, 0:1] * times[None, :]).astype(np.int64)
    dy = np.rint(velocities[:, 1:2] * times[None, :]).astype(np.int64)
    return dx, dy


@numba.njit(parallel=True, cache=True)
def _stack_nb(psi, phi, dx, dy, best_nu, best_v, best_psi, best_phi, v_offset, min_phi):
    n_exp, ny, nx = psi.shape
    n_v = dx.shape[0]
    for y in numba.prange(ny):
        for x in range(nx):
            nu_max = best_nu[y, x]
            for v in range(n_v):
                s_psi = 0.0
                s_phi = 0.0
                for e in range(n_exp):
                    xx = x + dx[v, e]
                    yy = y + dy[v, e]
                    if 0 <= xx < nx and 0 <= yy < ny:
                        s_psi += psi[e, yy, xx]
                        s_phi += phi[e, yy, xx]
                if s_phi > min_phi:
                    nu = s_psi / math.sqrt(s_phi)
                    if nu > nu_max:
                        nu_max = nu
                        best_nu[y, x] = nu
                        best_v[y, x] = v + v_offset
                        best_psi[y, x] = s_psi
                        best_phi[y, x] = s_phi


def stack_best(psi: np.ndarray, phi: np.ndarray, dx: np.ndarray, dy: np.ndarray, best: dict | None = None,
               v_offset: int = 0, min_phi: float = 0.0) -> dict:
    """Best likelihood per start pixel over a block of trajectories (numba; updates ``best`` in place).

    Parameters
    ----------
    psi, phi : ndarray (n_exp, ny, nx) float32
    dx, dy : ndarray (n_v, n_exp) int
        Pixel offsets of each trajectory at each exposure (:func:`trajectory_terms`).
    best : dict, optional
        ``nu, v, psi, phi`` arrays (ny, nx) from earlier blocks; created when None.
    v_offset : int
        Index of this block's first velocity in the full list (stored in ``best["v"]``).
    min_phi : float
        Trajectories with less information than this (mostly off the image or masked) are skipped.

    Returns
    -------
    dict
        ``nu`` (float32, -inf where nothing qualified), ``v`` (int64 index, -1), ``psi``, ``phi``.
    """
    _, ny, nx = psi.shape
    if best is None:
        best = {"nu": np.full((ny, nx), -np.inf, np.float32), "v": np.full((ny, nx), -1, np.int64),
                "psi": np.zeros((ny, nx), np.float32), "phi": np.zeros((ny, nx), np.float32)}
    _stack_nb(np.ascontiguousarray(psi, np.float32), np.ascontiguousarray(phi, np.float32),
              np.ascontiguousarray(dx, np.int64), np.ascontiguousarray(dy, np.int64),
              best["nu"], best["v"], best["psi"], best["phi"], int(v_offset), float(min_phi))
    return best


def stack_best_reference(psi, phi, dx, dy, min_phi: float = 0.0) -> dict:
    """Numpy twin of :func:`stack_best` (one shifted-array sum per trajectory)."""
    n_exp, ny, nx = psi.shape
    nu_best = np.full((ny, nx), -np.inf, np.float64)
    v_best = np.full((ny, nx), -1, np.int64)
    for v in range(dx.shape[0]):
        s_psi = np.zeros((ny, nx))
        s_phi = np.zeros((ny, nx))
        for e in range(n_exp):
            ox, oy = int(dx[v, e]), int(dy[v, e])
            ys, xs = slice(max(0, -oy), min(ny, ny - oy)), slice(max(0, -ox), min(nx, nx - ox))
            yt, xt = slice(max(0, oy), min(ny, ny + oy)), slice(max(0, ox), min(nx, nx + ox))
            s_psi[ys, xs] += psi[e][yt, xt]
            s_phi[ys, xs] += phi[e][yt, xt]
        ok = s_phi > min_phi
        nu = np.where(ok, s_psi / np.sqrt(np.where(ok, s_phi, 1.0)), -np.inf)
        better = nu > nu_best
        nu_best[better] = nu[better]
        v_best[better] = v
    return {"nu": nu_best, "v": v_best}
