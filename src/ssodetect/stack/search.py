"""Shift-and-stack search of difference images (KBMOD's likelihood, on the CPU).

For exposure ``e`` with difference image ``D_e`` and variance ``V_e`` (all on one pixel grid) and a
unit-sum PSF kernel ``K`` (a Gaussian, or a Gaussian swept along the trail a mover draws during
the exposure):

    psi_e = (D_e / V_e) * K        phi_e = (1 / V_e) * K^2        (* = correlation)

A mover starting at pixel ``(x, y)`` at the reference time with velocity ``(vx, vy)`` [px/h] sits
at ``(x + vx t_e, y + vy t_e)`` in exposure ``e``; its maximum-likelihood flux and significance are

    flux = sum_e psi_e / sum_e phi_e      nu = sum_e psi_e / sqrt(sum_e phi_e)

(positions rounded to the nearest pixel, as KBMOD does).  :func:`stack_best` keeps, for every start
pixel, the best ``nu`` over a block of velocities (numba, parallel over tiles of rows, contiguous
row sums on zero-padded images so that the inner loop vectorises); :func:`stack_best_torch` does
the same with PyTorch (a GPU when there is one); :func:`stack_best_reference` is the plain numpy
twin the parity tests compare both with.

Velocities come on a polar grid (:func:`velocity_grid`): neighbouring trajectories differ by at most
``fraction`` of the FWHM across the motion over the sequence, and by ``fraction`` of FWHM + trail
length along it (a trailed image tolerates a larger error along its length).

Arrays are ``(ny, nx)``, 0-based, float32; times in hours from the reference time.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from scipy import fft

__all__ = ["trail_kernel", "psi_phi", "velocity_grid", "stack_best", "stack_best_torch", "stack_best_reference",
           "trajectory_terms", "Likelihood"]

_TILE_ROWS = 16
_TILE_COLS = 1024


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


class Likelihood:
    """psi/phi images of one set of difference images for any kernel, from one forward FFT per exposure
    (of ``D/V`` and of ``1/V``) and two inverse FFTs per exposure and kernel.

    Parameters
    ----------
    diff, var : ndarray (n_exp, ny, nx)
        Difference images and their variances (NaN where masked).
    max_length : float
        Longest trail kernel that will be asked for [px] (sets the zero margin of the transforms).
    sigma : float
        PSF Gaussian sigma [px].
    workers : int
        Threads of the FFTs (-1: all cores).
    """

    def __init__(self, diff: np.ndarray, var: np.ndarray, sigma: float, max_length: float = 0.0, workers: int = -1):
        n_exp, ny, nx = diff.shape
        self.shape = (ny, nx)
        self.workers = workers
        pad = int(math.ceil(4.0 * sigma + 0.5 * max_length)) + 2  # no kernel wraps around
        self._fshape = (fft.next_fast_len(ny + 2 * pad, real=True), fft.next_fast_len(nx + 2 * pad, real=True))
        self._dw, self._w = [], []
        for e in range(n_exp):
            good = np.isfinite(diff[e]) & np.isfinite(var[e]) & (var[e] > 0)
            w = np.where(good, 1.0 / np.where(good, var[e], 1.0), 0.0).astype(np.float32)
            self._dw.append(fft.rfft2(np.where(good, diff[e], 0.0).astype(np.float32) * w, s=self._fshape,
                                      workers=workers))
            self._w.append(fft.rfft2(w, s=self._fshape, workers=workers))

    def _correlate(self, spectra: list, kernel: np.ndarray) -> np.ndarray:
        half = kernel.shape[0] // 2
        kf = fft.rfft2(kernel[::-1, ::-1].astype(np.float32), s=self._fshape, workers=self.workers)
        ny, nx = self.shape
        out = np.empty((len(spectra), ny, nx), np.float32)
        for e, spectrum in enumerate(spectra):
            out[e] = fft.irfft2(spectrum * kf, s=self._fshape, workers=self.workers)[half : half + ny, half : half + nx]
        return out

    def images(self, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(psi, phi), each ``(n_exp, ny, nx)`` float32, for a unit-sum ``kernel``."""
        return self._correlate(self._dw, kernel), np.maximum(self._correlate(self._w, kernel**2), 0.0)


def psi_phi(diff: np.ndarray, var: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Likelihood images of one exposure by direct correlation (the reference :class:`Likelihood` is tested
    against); masked pixels (NaN in ``diff`` or ``var``) contribute nothing.

    Returns
    -------
    psi, phi : ndarray (ny, nx) float32
    """
    from scipy.ndimage import correlate

    good = np.isfinite(diff) & np.isfinite(var) & (var > 0)
    w = np.where(good, 1.0 / np.where(good, var, 1.0), 0.0)
    d = np.where(good, diff, 0.0)
    psi = correlate(d * w, kernel, mode="constant", cval=0.0)
    phi = correlate(w, kernel**2, mode="constant", cval=0.0)
    return psi.astype(np.float32), np.maximum(phi, 0.0).astype(np.float32)


def _rings(rate_min: float, rate_max: float, span: float, fwhm: float, exptime: float,
           fraction: float) -> list[tuple[float, int]]:
    """The polar grid's rings: ``(speed [px/h], velocities on it)``."""
    span = max(span, 1e-6)
    rings = []
    v = max(rate_min, 1e-6)
    while v <= rate_max * (1 + 1e-9):
        rings.append(v)
        v += fraction * (fwhm + v * exptime) / span
    if not rings or rate_max - rings[-1] > 0.25 * fraction * fwhm / span:
        rings.append(rate_max)
    return [(r, max(8, int(math.ceil(2 * math.pi * r * span / (fraction * fwhm))))) for r in rings]


def velocity_count(rate_min: float, rate_max: float, span: float, fwhm: float, *, exptime: float = 0.0,
                   fraction: float = 0.5) -> int:
    """How many velocities :func:`velocity_grid` makes (counted without making them; beyond a million rings, a lower
    bound from their number in closed form: ``grid_fraction = 1e-300`` had looped until the memory ran out)."""
    span = max(span, 1e-6)
    v0, a, b = max(rate_min, 1e-6), fraction * exptime / span, fraction * fwhm / span
    if not (b > 0 and math.isfinite(b)):
        return 2**62
    # ring k's speed: v_k = (v0 + b/a) (1 + a)^k - b/a (v_k = v0 + k b without trails)
    steps = (math.log1p(a * (rate_max - v0) / (a * v0 + b)) / math.log1p(a) if a > 0 else (rate_max - v0) / b)
    if not steps <= 1e6:
        return 2**62 if not math.isfinite(steps) else int(8 * min(steps, 2**58))
    return sum(n for _, n in _rings(rate_min, rate_max, span, fwhm, exptime, fraction))


def velocity_grid(rate_min: float, rate_max: float, span: float, fwhm: float, *, exptime: float = 0.0,
                  fraction: float = 0.5) -> np.ndarray:
    """Velocities (vx, vy) [px/h] with speeds in [rate_min, rate_max] [px/h] on a polar grid.

    Parameters
    ----------
    span : float
        Time from the first to the last exposure [h].
    fwhm : float
        PSF FWHM [px].
    exptime : float
        Exposure time [h] (trail length = speed x exptime).
    fraction : float
        Largest offset over the span between neighbouring grid velocities, in units of FWHM across the
        motion and FWHM + trail length along it.
    """
    out = []
    for k, (r, n) in enumerate(_rings(rate_min, rate_max, span, fwhm, exptime, fraction)):
        a = (np.arange(n) + 0.5 * (k % 2)) * 2 * math.pi / n
        out.append(np.column_stack([r * np.cos(a), r * np.sin(a)]))
    return np.vstack(out)


def trajectory_terms(velocities: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixel offsets (n_v, n_exp) of each velocity at each time (nearest pixel)."""
    dx = np.rint(velocities[:, 0:1] * times[None, :]).astype(np.int64)
    dy = np.rint(velocities[:, 1:2] * times[None, :]).astype(np.int64)
    return dx, dy


@numba.njit(parallel=True, fastmath=True, cache=True)
def _stack_nb(psi, phi, pad, dx, dy, best_nu, best_v, v_offset, min_phi):
    n_exp = psi.shape[0]
    ny, nx = best_nu.shape
    n_v = dx.shape[0]
    n_ty = (ny + _TILE_ROWS - 1) // _TILE_ROWS
    n_tx = (nx + _TILE_COLS - 1) // _TILE_COLS
    for tile in numba.prange(n_ty * n_tx):
        y0 = (tile // n_tx) * _TILE_ROWS
        x0 = (tile % n_tx) * _TILE_COLS
        y1 = min(ny, y0 + _TILE_ROWS)
        w = min(nx, x0 + _TILE_COLS) - x0
        sp = np.empty(w, np.float32)
        sf = np.empty(w, np.float32)
        for v in range(n_v):
            for y in range(y0, y1):
                sp[:] = 0.0
                sf[:] = 0.0
                for e in range(n_exp):
                    yy = y + pad + dy[v, e]
                    xs = x0 + pad + dx[v, e]
                    rp = psi[e, yy, xs : xs + w]
                    rf = phi[e, yy, xs : xs + w]
                    for i in range(w):
                        sp[i] += rp[i]
                        sf[i] += rf[i]
                for i in range(w):  # branch-free so that it vectorises
                    f = sf[i]
                    sp[i] = sp[i] / math.sqrt(max(f, 1e-30)) if f > min_phi else -np.inf
                for i in range(w):
                    if sp[i] > best_nu[y, x0 + i]:
                        best_nu[y, x0 + i] = sp[i]
                        best_v[y, x0 + i] = v + v_offset


def stack_best(psi: np.ndarray, phi: np.ndarray, dx: np.ndarray, dy: np.ndarray, best: dict | None = None,
               v_offset: int = 0, min_phi: float = 0.0) -> dict:
    """Best likelihood per start pixel over a block of trajectories (numba; updates ``best`` in place).

    Parameters
    ----------
    psi, phi : ndarray (n_exp, ny, nx) float32
    dx, dy : ndarray (n_v, n_exp) int
        Pixel offsets of each trajectory at each exposure (:func:`trajectory_terms`).
    best : dict, optional
        ``nu, v`` arrays (ny, nx) from earlier blocks; created when None.
    v_offset : int
        Index of this block's first velocity in the full list (stored in ``best["v"]``).
    min_phi : float
        Trajectories with less information than this (mostly off the image or masked) are skipped.

    Returns
    -------
    dict
        ``nu`` (float32, -inf where nothing qualified), ``v`` (int64 index, -1).
    """
    n_exp, ny, nx = psi.shape
    if best is None:
        best = {"nu": np.full((ny, nx), -np.inf, np.float32), "v": np.full((ny, nx), -1, np.int64)}
    pad = int(max(np.abs(dx).max(initial=0), np.abs(dy).max(initial=0)))
    spec = ((0, 0), (pad, pad), (pad, pad))
    psi_p = np.pad(np.asarray(psi, np.float32), spec)
    phi_p = np.pad(np.asarray(phi, np.float32), spec)
    _stack_nb(psi_p, phi_p, pad, np.ascontiguousarray(dx, np.int64), np.ascontiguousarray(dy, np.int64),
              best["nu"], best["v"], int(v_offset), float(min_phi))
    return best


def stack_best_torch(psi: np.ndarray, phi: np.ndarray, dx: np.ndarray, dy: np.ndarray, best: dict | None = None,
                     v_offset: int = 0, min_phi: float = 0.0, device: str | None = None) -> dict:
    """:func:`stack_best` with PyTorch (optional ``[ml]`` extra): on a CUDA GPU when one is present.

    Same arguments and result as :func:`stack_best` (numpy arrays in and out; ``best`` updated in
    place); ``device`` defaults to ``"cuda"`` when available, else ``"cpu"``.
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    n_exp, ny, nx = psi.shape
    if best is None:
        best = {"nu": np.full((ny, nx), -np.inf, np.float32), "v": np.full((ny, nx), -1, np.int64)}
    pad = int(max(np.abs(dx).max(initial=0), np.abs(dy).max(initial=0)))
    spec = ((0, 0), (pad, pad), (pad, pad))
    psi_p = torch.from_numpy(np.pad(np.asarray(psi, np.float32), spec)).to(device)
    phi_p = torch.from_numpy(np.pad(np.asarray(phi, np.float32), spec)).to(device)
    nu_best = torch.from_numpy(best["nu"]).to(device)
    v_best = torch.from_numpy(best["v"]).to(device)
    neg_inf = torch.tensor(-np.inf, device=device)
    with torch.no_grad():
        for v in range(dx.shape[0]):
            s_psi = torch.zeros((ny, nx), device=device)
            s_phi = torch.zeros((ny, nx), device=device)
            for e in range(n_exp):
                y0, x0 = pad + int(dy[v, e]), pad + int(dx[v, e])
                s_psi += psi_p[e, y0 : y0 + ny, x0 : x0 + nx]
                s_phi += phi_p[e, y0 : y0 + ny, x0 : x0 + nx]
            nu = torch.where(s_phi > min_phi, s_psi / torch.sqrt(torch.clamp(s_phi, min=1e-30)), neg_inf)
            better = nu > nu_best
            nu_best = torch.where(better, nu, nu_best)
            v_best = torch.where(better, torch.full_like(v_best, v + v_offset), v_best)
    best["nu"][...] = nu_best.cpu().numpy()
    best["v"][...] = v_best.cpu().numpy()
    return best


def stack_best_reference(psi, phi, dx, dy, min_phi: float = 0.0) -> dict:
    """Numpy twin of :func:`stack_best` (one shifted-array sum per trajectory, float64)."""
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
