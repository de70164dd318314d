"""Labelled cutout-sequence datasets: synthetic movers injected into real or simulated exposures, and hard negatives.

Every sequence is a hypothesis (a sky position at the reference time, a motion) cut from the frames
with :func:`ssodetect.ml.sequences.cut_sequences`.  Positives carry a synthetic mover painted into the
frames' pixels before resampling: the frame's PSF swept along the track over each exposure (a trail),
shot noise added, the track linear or computed from real orbital elements re-aimed at the position.
The hypothesis differs from the truth by linking-sized errors (``position_error`` per frame).
Negatives are what vetting must reject, each labelled with its ``kind``:

``empty``      the hypothesis over sky (cosmic rays and noise of the frames included);
``star``       a compact static source of the frames at the reference time (it drifts across a track grid);
``galaxy``     an extended static source;
``hot_pixel``  one detector pixel, lit in every frame (it moves on the sky by the dithers);
``cosmic``     a cosmic-ray track painted in one frame at the predicted position;
``transient``  a PSF in one frame only;
``pair``       PSFs of unrelated fluxes in two frames only (a chance pairing of detections);
``misaligned`` a real mover whose motion differs from the hypothesis by 3-10 FWHM over the sequence.

Brightness is drawn as a total matched-filter S/N (log-uniform between ``snr_min`` and ``snr_max``),
which makes the difficulty comparable across rates (a trail spreads the flux); the magnitude it means
for each frame's zero point is recorded.  Storage: NPZ shards (float16 images, packed masks, labels)
with an ECSV metadata table and ``dataset.json`` (configuration, frame times and names).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Literal

import numpy as np
from astropy.table import Table, vstack
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tqdm.auto import tqdm

from ssodetect import safejson
from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.errors import InputError
from ssodetect.io.headers import world_to_pixels
from ssodetect.io.outputs import OutputStage
from ssodetect.ml.sequences import Frame, GridSpec, Sequences, compression, cut_sequences, frame_pixels
from ssodetect.simulate.render import FWHM_TO_SIGMA, splat, trail_points

__all__ = ["NEGATIVE_KINDS", "DatasetConfig", "build_dataset", "load_dataset", "positions_on_frames", "write_dataset",
           "trail_power"]

log = logging.getLogger(__name__)

NEGATIVE_KINDS = ("empty", "star", "galaxy", "hot_pixel", "cosmic", "transient", "pair", "misaligned")
SHARD_PATTERN = "shard_{:04d}.npz"


class DatasetConfig(BaseModel):
    """How a dataset is drawn (saved as ``dataset.json`` beside it)."""

    model_config = ConfigDict(extra="forbid")

    n_sequences: int = Field(default=2000, ge=1, le=100_000,
                             description="Sequences per CCD sequence of frames (at most 100,000).")
    size: int = Field(default=32, ge=8, le=128, description="Grid side [px].")
    mode: Literal["track", "sky"] = Field(default="track", description="Grid following the hypothesised motion, or fixed on the sky.")
    positive_fraction: float = Field(default=0.5, ge=0, le=1, description="Fraction of sequences with an injected mover.")
    rate_min: float = Field(default=0.5, gt=0, le=1e4, description="Slowest rate [arcsec/h] (log-uniform).")
    rate_max: float = Field(default=80.0, gt=0, le=1e4, description="Fastest rate [arcsec/h].")
    snr_min: float = Field(default=7.0, gt=0, le=1e5,
                           description="Faintest injection: total matched-filter S/N over the sequence.")
    snr_max: float = Field(default=3000.0, gt=0, le=1e5, description="Brightest injection (log-uniform S/N; 3000 is V~19.5 for "
                           "a Euclid point source).")
    partial_fraction: float = Field(default=0.15, ge=0, le=1, description="Share of hypotheses that run off the "
                                    "detector in some frames (seen in 3 or more).")
    negatives: dict[str, float] = Field(
        default={k: 1.0 for k in NEGATIVE_KINDS}, description="Relative frequency of each kind of negative.",
    )
    tracks: Literal["linear", "orbits"] = Field(
        default="linear", description="Mover tracks: linear at the drawn rate, or from the real orbital elements of "
        "'orbits' re-aimed at the position (their own rates).",
    )
    orbits: str = Field(default="", description="Orbit file (MPCORB.DAT or JPL SBDB JSON) for tracks = orbits.")
    position_error: float = Field(default=0.3, ge=0, description="Hypothesis error per frame [px, 1 sigma per axis].")
    fwhm: float = Field(default=0.0, ge=0, le=50, description="PSF FWHM [px] of the injections; 0: the header's PSF_FWHM, "
                        "else measured from the frame's stars.")
    order: Literal[1, 3] = Field(default=3, description="Interpolation order of the resampling.")
    edge: int = Field(default=16, ge=0, description="Hypothesis positions stay this far inside every frame [px].")
    seed: int = Field(default=0, ge=0, le=2**63 - 1,
                      description="Random seed, >= 0 (the dataset is deterministic for the seed and frames).")
    shard_size: int = Field(default=2048, ge=16, description="Sequences per NPZ shard.")

    @field_validator("negatives")
    @classmethod
    def _kinds(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(NEGATIVE_KINDS))
        if unknown:
            raise ValueError(f"unknown negative kinds {unknown}; known: {list(NEGATIVE_KINDS)}")
        if any(v < 0 for v in value.values()) or sum(value.values()) <= 0:
            raise ValueError("negative weights must be >= 0 with a positive sum")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> "DatasetConfig":
        if self.rate_max < self.rate_min or self.snr_max < self.snr_min:
            raise ValueError("rate_max must be >= rate_min and snr_max >= snr_min")
        if self.tracks == "orbits" and not self.orbits:
            raise ValueError("tracks = orbits needs an orbit file in 'orbits'")
        return self


def trail_power(length, sigma) -> np.ndarray:
    """``sum(P^2)`` [1/px^2] of a unit-flux Gaussian core of ``sigma`` [px] swept over ``length`` [px].

    A matched filter measures such a source with S/N = flux * sqrt(sum(P^2)) / noise per pixel.
    Pixel integration is included as a 1/12 px^2 variance.
    """
    length = np.atleast_1d(np.asarray(length, float))
    s = np.sqrt(np.asarray(sigma, float) ** 2 + 1.0 / 12.0) * np.ones_like(length)
    across = 1.0 / (2.0 * math.sqrt(math.pi) * s)
    u = np.linspace(-1.0, 1.0, 2001)[None, :]
    d = u * np.maximum(length, 1e-6)[:, None]
    g2 = np.exp(-0.25 * (d / s[:, None]) ** 2) / (2.0 * math.sqrt(math.pi) * s[:, None])
    along = np.trapezoid((1.0 - np.abs(u)) * g2, u, axis=1)
    along = np.where(length > 1e-3, along, across)
    return across * along


def _positions_at(ra, dec, v_ra, v_dec, dt_h):
    """Sky positions [deg] after ``dt_h`` hours of linear motion (arrays broadcast)."""
    plane = TangentPlane(ra, dec)
    return plane.to_sky(v_ra * dt_h, v_dec * dt_h)


class _Draw:
    """The random content of a dataset for one sequence of frames (geometry, kinds, fluxes, paint lists)."""

    def __init__(self, frames: list[Frame], config: DatasetConfig, rng, sources: Table, positions: Table | None):
        self.frames, self.cfg, self.rng = frames, config, rng
        n = config.n_sequences
        self.mjd = np.array([f.mjd for f in frames])
        self.t_ref = float(np.mean(self.mjd))
        self.exptime = float(np.median([f.exptime for f in frames]))
        self.scale = frames[0].scale
        self.sigma = float(np.median([f.fwhm for f in frames])) * FWHM_TO_SIGMA
        measured = np.array([f.psf_sigma for f in frames])
        self.template_sigma = float(np.median(measured)) if np.all(np.isfinite(measured)) else self.sigma
        positive = rng.random(n) < config.positive_fraction
        weights = np.array([config.negatives.get(k, 0.0) for k in NEGATIVE_KINDS])
        for kind in ("star", "galaxy"):
            if not np.any(np.asarray(sources["kind"]) == kind):
                weights[NEGATIVE_KINDS.index(kind)] = 0.0
        if weights.sum() <= 0:
            raise InputError("no negative kind can be drawn from these frames (no static source for star/galaxy)")
        kinds = rng.choice(NEGATIVE_KINDS, size=n, p=weights / weights.sum())
        self.kind = np.where(positive, "mover", kinds).astype("U10")
        self.label = positive.astype(np.int8)
        self.rate = np.exp(rng.uniform(math.log(config.rate_min), math.log(config.rate_max), n))
        self.pa = rng.uniform(0.0, 360.0, n)
        self.snr = np.exp(rng.uniform(math.log(config.snr_min), math.log(config.snr_max), n))
        self.frame_k = rng.integers(0, len(frames), n)
        self.frame_k2 = (self.frame_k + rng.integers(1, max(len(frames), 2), n)) % len(frames)
        self.ra, self.dec = self._positions(positions, sources)
        self.true_v = self._true_motion()
        self.orbit_paths = None

    def _positions(self, positions: Table | None, sources: Table):
        """Hypothesis positions at ``t_ref`` [deg]: chosen, on static sources, or uniform inside every frame."""
        cfg, rng, n = self.cfg, self.rng, self.cfg.n_sequences
        ra, dec = np.empty(n), np.empty(n)
        todo = np.ones(n, bool)
        if positions is not None:
            k = np.arange(n) % len(positions)
            ra[:], dec[:] = np.asarray(positions["ra"], float)[k], np.asarray(positions["dec"], float)[k]
            return ra, dec
        for kind in ("star", "galaxy"):
            sel = np.nonzero(self.kind == kind)[0]
            pool = np.nonzero(np.asarray(sources["kind"]) == kind)[0]
            if sel.size and pool.size:
                pick = rng.choice(pool, sel.size)
                ra[sel], dec[sel] = np.asarray(sources["ra"])[pick], np.asarray(sources["dec"])[pick]
                todo[sel] = False
        ny, nx = self.frames[0].data.shape
        # most hypotheses lie inside every frame; a share runs off the detector in some (fast movers entering or
        # leaving it): those need 3 frames
        partial = rng.random(n) < cfg.partial_fraction
        need = np.where(partial, min(3, len(self.frames)), len(self.frames))
        for _ in range(30):
            idx = np.nonzero(todo)[0]
            if idx.size == 0:
                break
            x = rng.uniform(cfg.edge, nx - 1 - cfg.edge, idx.size)
            y = rng.uniform(cfg.edge, ny - 1 - cfg.edge, idx.size)
            r, d = self.frames[0].wcs.all_pix2world(x, y, 0)
            ra[idx], dec[idx] = r, d
            v_ra, v_dec = self.rate[idx] * np.sin(np.radians(self.pa[idx])), self.rate[idx] * np.cos(np.radians(self.pa[idx]))
            if np.any(partial[idx]):  # anywhere along the track, not only inside the first frame
                half_span = 0.5 * (self.mjd[-1] - self.mjd[0]) * 24.0
                shift = rng.uniform(-1.0, 1.0, idx.size) * half_span * partial[idx]
                r, d = _positions_at(r, d, v_ra, v_dec, shift)
                ra[idx], dec[idx] = r, d
            count = np.zeros(idx.size, int)
            for f in self.frames:
                pr, pd = _positions_at(r, d, v_ra, v_dec, (f.mjd - self.t_ref) * 24.0)
                fx, fy = f.wcs.all_world2pix(pr, pd, 0)
                fny, fnx = f.data.shape
                count += (fx > cfg.edge) & (fx < fnx - 1 - cfg.edge) & (fy > cfg.edge) & (fy < fny - 1 - cfg.edge)
            todo[idx[count >= need[idx]]] = False
        if todo.any():
            log.info("%d of %d sequences run partly off the frames (fast tracks on small frames)", int(todo.sum()), n)
        return ra, dec

    def _true_motion(self):
        """Motion [arcsec/h] of the painted mover: the hypothesis, or 3-10 FWHM off it over the span (misaligned)."""
        v = np.column_stack([self.rate * np.sin(np.radians(self.pa)), self.rate * np.cos(np.radians(self.pa))])
        mis = self.kind == "misaligned"
        span_h = max((self.mjd[-1] - self.mjd[0]) * 24.0, 1e-6)
        off = self.rng.uniform(3.0, 10.0, mis.sum()) * self.sigma / FWHM_TO_SIGMA * self.scale / span_h
        ang = self.rng.uniform(0, 2 * np.pi, mis.sum())
        v[mis] += np.column_stack([off * np.cos(ang), off * np.sin(ang)])
        return v

    def use_orbits(self, orbits: Table, observer) -> None:
        """Replace the positives' linear tracks by ephemerides of real orbits aimed at their positions."""
        from ssodetect.known.propagate import predict
        from ssodetect.simulate.known import place_known_objects

        sel = np.nonzero(self.kind == "mover")[0]
        mags = np.full(sel.size, 20.0)
        placed_orbits, placed = place_known_objects(orbits, sel.size, self.t_ref, list(zip(self.ra[sel], self.dec[sel])),
                                                    mags, observer, self.rng)
        if len(placed) < sel.size:
            raise InputError(f"{self.cfg.orbits}: only {len(placed)} of {sel.size} orbits could be aimed at the field")
        half = 0.5 * self.exptime / 86400.0
        times = np.concatenate([self.mjd - half, self.mjd, self.mjd + half])
        pred = predict(placed_orbits[placed], times, observer)
        t = self.mjd.size
        ra = np.asarray(pred["ra"]).reshape(sel.size, 3, t)
        dec = np.asarray(pred["dec"]).reshape(sel.size, 3, t)
        self.orbit_paths = (sel, ra, dec)  # (start, mid, end) x frame
        plane = TangentPlane(ra[:, 1, 0], dec[:, 1, 0])
        xi, eta = plane.to_plane(ra[:, 1, -1], dec[:, 1, -1])
        span_h = (self.mjd[-1] - self.mjd[0]) * 24.0
        self.rate[sel] = np.hypot(xi, eta) / span_h
        self.pa[sel] = np.degrees(np.arctan2(xi, eta)) % 360.0
        self.true_v[sel] = np.column_stack([xi, eta]) / span_h
        mid_ra, mid_dec = ra[:, 1, :], dec[:, 1, :]
        # the hypothesis position at t_ref: the ephemeris interpolated linearly
        w = (self.t_ref - self.mjd[0]) / max(self.mjd[-1] - self.mjd[0], 1e-9)
        xi_r, eta_r = plane.to_plane(mid_ra[:, -1], mid_dec[:, -1])
        self.ra[sel], self.dec[sel] = plane.to_sky(w * xi_r, w * eta_r)

    def grid(self) -> GridSpec:
        """Hypothesis grids: linear track through the hypothesis, plus a position error per frame."""
        cfg, rng, n = self.cfg, self.rng, self.cfg.n_sequences
        v_ra, v_dec = self.rate * np.sin(np.radians(self.pa)), self.rate * np.cos(np.radians(self.pa))
        dt = (self.mjd[None, :] - self.t_ref) * 24.0
        if cfg.mode == "sky":
            gra, gdec = np.repeat(self.ra[:, None], self.mjd.size, 1), np.repeat(self.dec[:, None], self.mjd.size, 1)
            pa, stretch = np.full(n, 270.0), np.ones(n)
        else:
            gra, gdec = _positions_at(self.ra[:, None], self.dec[:, None], v_ra[:, None], v_dec[:, None], dt)
            if self.orbit_paths is not None:
                sel, ra, dec = self.orbit_paths
                gra[sel], gdec[sel] = ra[:, 1, :], dec[:, 1, :]
            pa, stretch = self.pa.copy(), compression(self.rate, self.exptime, self.scale, cfg.size)
        err = cfg.position_error * self.scale
        if err > 0:
            gra, gdec = _positions_at(gra, gdec, rng.normal(0, err, gra.shape), rng.normal(0, err, gra.shape), 1.0)
        return GridSpec(gra, gdec, pa, stretch, self.scale, cfg.size)

    def true_paths(self, i: int):
        """(start, end) sky positions [deg] of the painted mover in frame ``i``, arrays (N,)."""
        f = self.frames[i]
        half_h = 0.5 * f.exptime / 3600.0
        dt = (f.mjd - self.t_ref) * 24.0
        v_ra, v_dec = self.true_v[:, 0], self.true_v[:, 1]
        r0, d0 = _positions_at(self.ra, self.dec, v_ra, v_dec, dt - half_h)
        r1, d1 = _positions_at(self.ra, self.dec, v_ra, v_dec, dt + half_h)
        if self.orbit_paths is not None:
            sel, ra, dec = self.orbit_paths
            r0[sel], d0[sel], r1[sel], d1[sel] = ra[:, 0, i], dec[:, 0, i], ra[:, 2, i], dec[:, 2, i]
        return r0, d0, r1, d1


def _paint_plan(draw: _Draw, spec: GridSpec) -> tuple[list, np.ndarray, np.ndarray]:
    """Per sequence and frame the sources to paint (in frame pixels), the mover flux [ADU] and its magnitude."""
    frames, rng = draw.frames, draw.rng
    n, t = spec.ra.shape
    plan = [[[] for _ in range(t)] for _ in range(n)]
    centres = [frame_pixels(f, spec, i)[:2] for i, f in enumerate(frames)]
    noise = np.array([[f.noise_at(centres[i][0][k], centres[i][1][k]) for i, f in enumerate(frames)] for k in range(n)])
    sig = np.array([f.fwhm * FWHM_TO_SIGMA for f in frames])
    flux = np.full(n, np.nan)
    mag = np.full(n, np.nan)
    movers = np.isin(draw.kind, ("mover", "misaligned"))
    ends = []
    for i, f in enumerate(frames):
        r0, d0, r1, d1 = draw.true_paths(i)
        x0, y0 = f.wcs.all_world2pix(r0, d0, 0)
        x1, y1 = f.wcs.all_world2pix(r1, d1, 0)
        ends.append((x0, y0, x1, y1))
    lengths = np.array([np.hypot(e[2] - e[0], e[3] - e[1]) for e in ends]).T  # (n, t)
    power = np.column_stack([trail_power(lengths[:, i], sig[i]) for i in range(t)])
    point = trail_power(np.zeros(1), sig)[None, :]  # (1, t)
    idx = np.nonzero(movers)[0]
    flux[idx] = draw.snr[idx] / np.sqrt(np.sum(power[idx] / noise[idx] ** 2, axis=1))
    for k in idx:
        for i in range(t):
            x0, y0, x1, y1 = (e[k] for e in ends[i])
            plan[k][i].append(("trail", x0, y0, x1, y1, flux[k]))
    for k in np.nonzero(np.isin(draw.kind, ("transient", "pair")))[0]:
        chosen = [draw.frame_k[k]] if draw.kind[k] == "transient" else [draw.frame_k[k], draw.frame_k2[k]]
        for j, i in enumerate(chosen):
            s = draw.snr[k] / math.sqrt(len(chosen)) * (rng.uniform(0.5, 1.5) if j else 1.0)
            fl = s * noise[k, i] / math.sqrt(point[0, i])
            plan[k][i].append(("point", centres[i][0][k], centres[i][1][k], fl))
            flux[k] = fl if j == 0 else flux[k]
    for k in np.nonzero(draw.kind == "cosmic")[0]:
        i = draw.frame_k[k]
        length = rng.exponential(2.5) + 0.5
        ang = rng.uniform(0, 2 * np.pi)
        plan[k][i].append(("cosmic", centres[i][0][k], centres[i][1][k], length, ang, 2.0 * draw.snr[k] * noise[k, i]))
    for k in np.nonzero(draw.kind == "hot_pixel")[0]:
        i = draw.frame_k[k]
        hx, hy = int(round(centres[i][0][k])), int(round(centres[i][1][k]))
        value = draw.snr[k] * noise[k, i] * rng.lognormal(0.0, 0.3)
        for j in range(t):
            plan[k][j].append(("pixel", hx, hy, value))
    zp = np.array([f.zeropoint for f in frames])
    zp = float(np.median(zp[np.isfinite(zp)])) if np.isfinite(zp).any() else math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = np.where(np.isfinite(flux) & (flux > 0), zp - 2.5 * np.log10(flux / draw.exptime), np.nan)
    return plan, flux, mag


def _painter(plan: list, frames: list[Frame], rng):
    """``paint(n, i, window, x0, y0)`` for :func:`cut_sequences`: the plan's sources with shot noise."""

    def paint(n, i, window, wx0, wy0):
        ops = plan[n][i]
        if not ops:
            return
        f = frames[i]
        layer = np.zeros_like(window)
        for op in ops:
            if op[0] == "trail":
                _, x0, y0, x1, y1, fl = op
                splat(layer, *trail_points(x0 - wx0, y0 - wy0, x1 - wx0, y1 - wy0, fl), f.psf)
            elif op[0] == "point":
                splat(layer, np.array([op[1] - wx0]), np.array([op[2] - wy0]), np.array([op[3]]), f.psf)
            elif op[0] == "pixel":
                px, py = op[1] - wx0, op[2] - wy0
                if 0 <= py < layer.shape[0] and 0 <= px < layer.shape[1]:
                    layer[py, px] += op[3]
            else:  # cosmic: charge deposited along a short straight track
                _, cx, cy, length, ang, charge = op
                m = max(1, int(math.ceil(length / 0.05)))
                s = (np.arange(m) + 0.5) / m - 0.5
                ix = np.floor(cx - wx0 + s * length * math.cos(ang) + 0.5).astype(int)
                iy = np.floor(cy - wy0 + s * length * math.sin(ang) + 0.5).astype(int)
                ok = (ix >= 0) & (ix < layer.shape[1]) & (iy >= 0) & (iy < layer.shape[0])
                np.add.at(layer, (iy[ok], ix[ok]), charge / m)
        if math.isfinite(f.gain) and f.gain > 0:
            layer += rng.normal(0.0, 1.0, layer.shape) * np.sqrt(np.clip(layer, 0, None) / f.gain)
        window += layer

    return paint


def positions_on_frames(frames: list[Frame], ra, dec) -> np.ndarray:
    """On how many of ``frames`` each sky position lies.

    Parameters
    ----------
    frames : list of Frame
        Exposures with a WCS; a frame covers pixel centres 0..n-1 (edges at -0.5 and ``n - 0.5``).
    ra, dec : array_like (n,)
        Positions [deg].

    Returns
    -------
    ndarray (n,) int
    """
    ra, dec = np.atleast_1d(np.asarray(ra, float)), np.atleast_1d(np.asarray(dec, float))
    on = np.zeros(ra.size, int)
    for f in frames:
        ny, nx = f.data.shape
        cra, cdec = (float(v) for v in f.wcs.all_pix2world((nx - 1) / 2.0, (ny - 1) / 2.0, 0))
        # (a projection maps far points too, some of them onto the frame: only those within 60 deg are tried)
        cos_sep = (np.sin(np.radians(dec)) * math.sin(math.radians(cdec))
                   + np.cos(np.radians(dec)) * math.cos(math.radians(cdec)) * np.cos(np.radians(ra - cra)))
        near = np.nonzero(cos_sep > 0.5)[0]
        if near.size == 0:
            continue
        x, y = world_to_pixels(f.wcs, ra[near], dec[near])
        inside = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
        on[near[inside]] += 1
    return on


def build_dataset(frames: list[Frame], config: DatasetConfig, *, sources: Table, positions: Table | None = None,
                  observer=None) -> tuple[Sequences, Table]:
    """Draw, paint and cut ``config.n_sequences`` labelled sequences from one sequence of frames.

    Parameters
    ----------
    frames : list of Frame
        Exposures of one CCD in time order (3 or more).
    sources : Table
        Static sources of the frames (``ra``, ``dec`` [deg], ``kind`` = star | galaxy), for those negatives.
    positions : Table, optional
        Chosen hypothesis positions (``ra``, ``dec`` [deg]) used in turn instead of random ones.
    observer : ssodetect.known.Observer, optional
        For ``tracks = orbits`` (default: the geocentre).

    Returns
    -------
    sequences : Sequences
    meta : Table
        One row per sequence: ``label`` (1 mover), ``kind``, ``rate`` [arcsec/h] and ``pa`` [deg] of the
        hypothesis, ``snr``, ``flux`` [ADU], ``mag``, ``trail`` [px] and ``sigma`` [px] (native), ``stretch``,
        ``ra``/``dec`` at ``mjd_ref``.
    """
    if len(frames) < 3:
        raise InputError(f"a dataset needs at least 3 exposures, got {len(frames)}")
    order = np.argsort([f.mjd for f in frames])
    frames = [frames[k] for k in order]
    rng = np.random.default_rng(config.seed)
    draw = _Draw(frames, config, rng, sources, positions)
    if config.tracks == "orbits":
        from ssodetect.known import Observer, read_orbits

        draw.use_orbits(read_orbits(config.orbits), observer or Observer())
    spec = draw.grid()
    plan, flux, mag = _paint_plan(draw, spec)
    seqs = cut_sequences(frames, spec, order=config.order, paint=_painter(plan, frames, rng))
    meta = Table({
        "label": draw.label, "kind": draw.kind, "rate": draw.rate, "pa": draw.pa, "snr": draw.snr, "flux": flux,
        "mag": mag, "trail": draw.rate * draw.exptime / 3600.0 / draw.scale, "sigma": np.full(len(draw.rate), draw.template_sigma),
        "stretch": spec.stretch, "ra": draw.ra, "dec": draw.dec, "mjd_ref": np.full(len(draw.rate), draw.t_ref),
    })
    for name, unit in (("rate", "arcsec/h"), ("pa", "deg"), ("flux", "adu"), ("mag", "mag"), ("trail", "pix"),
                       ("sigma", "pix"), ("ra", "deg"), ("dec", "deg"), ("mjd_ref", "d")):
        meta[name].unit = unit
    return seqs, meta


def write_dataset(out: str | Path, parts: list[tuple[Sequences, Table]], config: DatasetConfig, info: dict,
                  *, progress: bool = False) -> Path:
    """Write sequences (from one or more frame sequences) as NPZ shards, ``meta.ecsv`` and ``dataset.json``.

    The directory appears complete or not at all (staged, then moved into place).
    """
    images = np.concatenate([p[0].images for p in parts])
    masks = np.concatenate([p[0].masks for p in parts])
    metas = []
    for j, (seqs, meta) in enumerate(parts):
        m = meta.copy()
        m["part"] = j
        metas.append(m)
    meta = vstack(metas)
    meta.add_column(np.arange(len(meta)), name="index", index=0)
    with OutputStage(out, replace=True, kind="dataset") as stage:
        n_shards = int(math.ceil(len(meta) / config.shard_size))
        for s in tqdm(range(n_shards), desc="shards", disable=not progress):
            sl = slice(s * config.shard_size, (s + 1) * config.shard_size)
            with open(stage.file(SHARD_PATTERN.format(s)), "wb") as handle:
                np.savez_compressed(handle, images=images[sl].astype(np.float16), masks=np.packbits(masks[sl], axis=-1),
                                    labels=np.asarray(meta["label"][sl], np.int8), index=np.asarray(meta["index"][sl]))
        meta.write(stage.file("meta.ecsv"), format="ascii.ecsv")
        doc = {"config": config.model_dump(), "shape": list(images.shape[1:]), "n_sequences": len(meta),
               "n_shards": n_shards, "parts": info.get("parts", []),
               "skipped_ccds": info.get("skipped_ccds", []), "software": info.get("software", {})}
        stage.file("dataset.json").write_text(json.dumps(doc, indent=2))
    return Path(out)


def load_dataset(path: str | Path) -> tuple[np.ndarray, np.ndarray, Table, dict]:
    """Read a dataset directory: ``images`` (N, T, H, W) float32, ``masks`` bool, ``meta`` and the dataset.json dict."""
    path = Path(path)
    doc_file = path / "dataset.json"
    if not doc_file.is_file():
        raise InputError(f"{path}: not a dataset directory (no dataset.json)")
    try:
        doc = safejson.read(doc_file)
        meta = Table.read(path / "meta.ecsv", format="ascii.ecsv")
        images, masks = [], []
        width = int(doc["shape"][-1])
        for s in range(int(doc["n_shards"])):
            with np.load(path / SHARD_PATTERN.format(s)) as z:
                images.append(z["images"].astype(np.float32))
                masks.append(np.unpackbits(z["masks"], axis=-1, count=width).astype(bool))
        if not images:
            raise ValueError("no shard (n_shards = 0)")
        images = np.concatenate(images)
        masks = np.concatenate(masks)
        mode = doc["config"]["mode"]
        if not isinstance(mode, str) or images.ndim != 4 or masks.shape != images.shape:
            raise ValueError(f"shards of shape {images.shape} and masks {masks.shape} do not make sequences "
                             f"(N, T, H, W) in a mode ({mode!r})")
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise InputError(f"{path}: unreadable dataset ({exc})") from None
    for name in ("label", "rate", "trail", "sigma", "stretch"):  # (a missing one was a KeyError deep in scoring)
        if name not in meta.colnames or not np.issubdtype(np.asarray(meta[name]).dtype, np.number):
            raise InputError(f"{path}: meta.ecsv has no numeric column {name!r} (a damaged dataset)")
    if images.shape[0] != len(meta):
        raise InputError(f"{path}: {images.shape[0]} sequences in the shards but {len(meta)} metadata rows")
    labels = np.asarray(meta["label"], float)
    if not np.all((labels == 0) | (labels == 1)):  # (7 and -3 had trained as "7 movers, 0 negatives": campaign 31)
        odd = sorted({float(v) for v in labels[(labels != 0) & (labels != 1)]})[:3]
        raise InputError(f"{path}: meta.ecsv labels must be 0 (no mover) or 1 (mover); found {odd} (a damaged "
                         "dataset)")
    return images, masks, meta, doc
