"""Euclid-VIS-like scene simulator with truth.

Photometry (documented, physical):

* AB-like magnitude ``m`` gives ``10**(-0.4 (m - zp_e))`` e-/s with ``zp_e = 25.6``;
* sky ``22.2`` mag/arcsec^2, pixel scale ``0.1"``, so ~130 e- per pixel in 566 s;
* gain 3.5 e-/ADU, read noise 4.5 e-, full well 200 ke- (bleeding along columns);
* images are written in ADU with ``MAGZERO = zp_e - 2.5 log10(gain)`` (for ADU/s).

The scene holds stars (with Gaia-like proper motions, some saturated, optionally
with six diffraction spikes), galaxies,
cosmic rays (charge deposited along short tracks, ~1.5 % of pixels per 566 s),
hot pixels (half flagged in FLG), a satellite trail in one exposure, one-exposure
transients, and moving objects drawn as trails integrated over each exposure.

Sky geometry: the focal plane is a grid of CCDs separated by gaps; exposures are
dithered by offsets of the pointing.  The true mapping of every CCD is TAN plus a
SIP optical distortion shared by the focal plane (radial cubic plus a quadratic
term, ``distortion`` px at the corners of a 4k CCD on the optical axis).  The headers written carry a
plain TAN WCS perturbed per exposure by a pointing error, a rotation and a scale
error (``header_*_error``), as real headers are; the true WCS of every CCD and
exposure is written to ``truth_wcs.fits``.  Moving objects move linearly in the
tangent plane of the field centre.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table, vstack
from astropy.time import Time
from astropy.wcs import WCS, Sip
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ssodetect._version import __version__
from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.errors import ConfigError
from ssodetect.io.outputs import OutputStage, sha256_file
from ssodetect.simulate.render import DoubleGaussianPSF, MoffatPSF, psf_stamp, splat, trail_points

__all__ = [
    "SimulationConfig", "Scene", "draw_scene", "render_ccd", "header_wcs", "limiting_magnitude",
    "reference_catalogue", "scene_psf", "simulate",
]

log = logging.getLogger(__name__)

FLAG_HOT = 1
FLAG_SATURATED = 2


class SimulationConfig(BaseModel):
    """Parameters of a simulated sequence (defaults: Euclid VIS wide survey)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    seed: int = Field(default=1, ge=0, description="Random seed (>= 0); the scene is deterministic for a seed.")
    nccd: int = Field(default=1, ge=1, le=36, description="Number of CCDs (arranged in a grid).")
    nx: int = Field(default=2048, ge=128, le=8192, description="CCD width [px] (at most 8192: a Euclid CCD is ~4k).")
    ny: int = Field(default=2048, ge=128, le=8192, description="CCD height [px] (at most 8192).")
    n_exposures: int = Field(default=4, ge=1, le=200, description="Number of exposures (at most 200).")
    exptime: float = Field(default=566.0, gt=0, le=1e5, description="Exposure time [s] (at most 1e5).")
    cadence: float = Field(default=1100.0, gt=0, le=1e7, description="Start-to-start time between exposures [s].")
    start: str = Field(default="2026-03-21T00:00:00", description="Start time of the first exposure (UTC, ISO).")
    ra: float = Field(default=150.0, ge=0.0, lt=360.0, description="Field centre RA [deg].")
    dec: float = Field(default=25.0, ge=-89.0, le=89.0, description="Field centre Dec [deg] (the poles excepted: "
                       "dithers and motions are drawn in RA/Dec).")
    pixel_scale: float = Field(default=0.1, ge=0.005, le=60.0, description="Pixel scale [arcsec/px].")
    ccd_gap: int = Field(default=60, ge=0, le=8192, description="Gap between CCDs [px].")
    dither: float = Field(default=3.0, ge=0, le=3600.0, description="RMS dither offset between exposures [arcsec] (at most 1 deg).")
    fwhm_min: float = Field(default=1.6, gt=0, le=50.0, description="Smallest PSF core FWHM [px].")
    fwhm_max: float = Field(default=1.8, gt=0, le=50.0, description="Largest PSF core FWHM [px] (at most 50).")
    psf_model: Literal["double_gaussian", "moffat"] = Field(
        default="double_gaussian",
        description="PSF: 'double_gaussian' (core of the exposure's FWHM plus a wide wing) or 'moffat' (of that FWHM).",
    )
    psf_wing_fraction: float = Field(default=0.12, ge=0, lt=1, description="Double Gaussian: flux fraction in the wing.")
    psf_wing_sigma: float = Field(default=2.5, gt=0, description="Double Gaussian: sigma of the wing [px].")
    moffat_beta: float = Field(default=3.0, gt=1.5, le=20, description="Moffat index beta.")
    psf_ellipticity: float = Field(
        default=0.0, gt=-0.5, lt=0.5, description="PSF elongation along x (> 0) or y (< 0): sigma_x/sigma_y = (1+e)/(1-e)."
    )
    zp_electrons: float = Field(default=25.6, description="Magnitude giving 1 e-/s.")
    sky_mag: float = Field(default=22.2, description="Sky brightness [mag/arcsec^2].")
    gain: float = Field(default=3.5, gt=0, description="Gain [e-/ADU].")
    read_noise: float = Field(default=4.5, ge=0, description="Read noise [e-].")
    full_well: float = Field(default=200000.0, gt=0, description="Full well [e-].")
    star_density: float = Field(default=40000.0, ge=0, le=1e7, description="Stars per deg^2 with 14 < m < 26 (at most 1e7).")
    star_slope: float = Field(
        default=0.15, ge=0, le=0.6, description="Star counts dN/dm ~ 10^(slope m) (0.15: high Galactic latitude)."
    )
    refcat_mag_limit: float = Field(default=21.0, description="Faintest star in the reference catalogue (Gaia: 21).")
    distortion: float = Field(
        default=1.5, ge=0, le=100.0,
        description="True optical distortion [px] at 2896 px from the optical axis (the corner of a 4k CCD "
        "centred on it), growing as r^3; absent from the headers.",
    )
    header_pointing_error: float = Field(
        default=0.0, ge=0, le=3600.0,
        description="Largest pointing error of the header WCS, per exposure [arcsec] (at most 1 deg)."
    )
    header_rotation_error: float = Field(
        default=0.0, ge=0, le=180.0, description="Largest rotation error of the header WCS, per exposure [deg]."
    )
    tracking_drift: float = Field(
        default=0.0, ge=0, le=60.0,
        description="Pointing drift during each exposure [arcsec]: stars are trailed (tracking error, Cassini-like); "
        "the WCS describes the mid-exposure pointing.",
    )
    write_wcs: bool = Field(
        default=True,
        description="Write the WCS into the image headers; False: only RA/DEC pointing and PIXSCALE, as many ground "
        "cameras (the truth keeps the WCS).",
    )
    tracking_angle: float = Field(default=30.0, description="Direction of the drift [deg from +xi towards +eta].")
    tracking_angle_step: float = Field(
        default=0.0, ge=-360.0, le=360.0, description="Change of the drift's direction from one exposure to the next [deg] (a mount whose "
        "error wanders)."
    )
    tracked_target: bool = Field(
        default=False, description="Non-sidereal tracking: one more mover (TARGET, V 20, near the field's centre) "
        "moves against the drift at tracking_drift per exposure, so the telescope follows it (a point; the stars "
        "trail). Needs a drift that does not turn."
    )
    spikes: bool = Field(default=False, description="Draw diffraction spikes (6, Euclid-like) on saturated stars.")
    header_scale_error: float = Field(
        default=0.0, ge=0, lt=0.2, description="Largest relative pixel-scale error of the header WCS."
    )
    header_errors_at_max: bool = Field(
        default=False,
        description="Every exposure's header is off by the full header_*_error (random direction and signs) instead of "
        "up to it.",
    )
    galaxy_density: float = Field(default=90000.0, ge=0, le=1e7, description="Galaxies per deg^2 with 20 < m < 26 (at most 1e7).")
    sersic_min: float = Field(default=1.0, ge=0.3, le=8, description="Smallest Sersic index of the galaxies (1: exponential disc).")
    sersic_max: float = Field(default=1.0, ge=0.3, le=8, description="Largest Sersic index of the galaxies (drawn uniformly).")
    cosmic_fraction: float = Field(default=0.015, ge=0, lt=0.2, description="Fraction of pixels hit by cosmic rays per 566 s.")
    hot_fraction: float = Field(default=1e-4, ge=0, le=0.5, description="Fraction of hot pixels (at most 0.5).")
    hot_flagged: float = Field(default=0.5, ge=0, le=1, description="Fraction of hot pixels flagged in FLG.")
    movers_per_ccd: float = Field(default=40.0, ge=0, le=10000.0, description="Moving objects per 2048^2 px of detector (at most 1e4).")
    mover_mag_min: float = Field(default=20.0, description="Brightest mover [mag].")
    mover_mag_max: float = Field(default=27.0, description="Faintest mover [mag].")
    slow_rate_min: float = Field(default=0.5, gt=0, le=36000.0, description="Slowest mover [arcsec/h].")
    slow_rate_max: float = Field(default=10.0, gt=0, le=36000.0, description="Upper end of the slow population [arcsec/h].")
    fast_rate_max: float = Field(default=80.0, gt=0, le=36000.0, description="Fastest mover [arcsec/h] (at most 36000).")
    fast_fraction: float = Field(default=0.2, ge=0, le=1, description="Fraction of movers faster than slow_rate_max.")
    mover_directions: Literal["uniform", "ecliptic"] = Field(
        default="uniform",
        description="Directions of motion: 'uniform', or 'ecliptic': retrograde_fraction of them along ecliptic_pa, the "
        "others the opposite way, with a Gaussian spread of direction_spread, as main-belt asteroids near opposition.",
    )
    ecliptic_pa: float = Field(default=270.0, description="Direction of the clustered motion [deg, N through E].")
    direction_spread: float = Field(default=10.0, ge=0, description="RMS spread of clustered directions [deg].")
    retrograde_fraction: float = Field(
        default=0.85, ge=0, le=1, description="Clustered directions: fraction moving along ecliptic_pa (the others opposite)."
    )
    transients_per_ccd: float = Field(default=5.0, ge=0, le=10000.0, description="One-exposure point transients per CCD and exposure sequence (at most 1e4).")
    satellite: bool = Field(default=True, description="Draw one satellite trail across the field in one exposure.")
    layout: str = Field(default="mef", pattern="^(mef|plain)$", description="'mef': Euclid MEF per exposure; 'plain': one file per CCD.")
    telescope: str = Field(default="EUCLID", description="TELESCOP keyword (instrument profiles are chosen by it).")
    instrument: str = Field(default="VIS", description="INSTRUME keyword.")
    known_orbits: str = Field(
        default="", description="Orbit file of real elements (MPCORB.DAT or JPL SBDB JSON) from which known objects are "
        "placed in the field (node and perihelion turned towards it, H set for the magnitude; a, e, i, M real); the "
        "run's orbit file known_orbits.json holds them and every other orbit unchanged.",
    )
    known_count: int = Field(default=0, ge=0, description="Known objects placed on the detectors.")
    observer_position: list[float] = Field(
        default=[], description="Geocentric ICRS position [km] of a space-based observatory, written as "
        "OBSPOS_X/Y/Z; empty: the geocentre.",
    )
    broken_wcs_exposures: list[int] = Field(
        default=[], description="Exposures whose header WCS is written broken (singular CD matrix): bad-input scenes.",
    )
    family_member: int = Field(
        default=-1, description="The scene-family member these parameters were drawn for (-1: none; see simulate.family).",
    )

    @model_validator(mode="after")
    def _ranges(self) -> "SimulationConfig":
        for name, value in self:  # a negative zero passes ge=0 and is refused by numpy's scales (--dither -0.0)
            if isinstance(value, float) and value == 0.0:
                object.__setattr__(self, name, 0.0)
        try:  # (an unreadable time was astropy's bare ValueError: campaign 31)
            Time(self.start, scale="utc")
        except ValueError:
            raise ValueError(f"start {self.start!r} is no ISO time (e.g. 2026-03-21T00:00:00)") from None
        if self.fast_rate_max < self.slow_rate_max:  # (the fast population is drawn between the two)
            raise ValueError(f"fast_rate_max ({self.fast_rate_max:g}) must be at least slow_rate_max "
                             f"({self.slow_rate_max:g} arcsec/h), where the fast movers begin")
        if self.fwhm_max < self.fwhm_min:
            raise ValueError("fwhm_max must be at least fwhm_min")
        if self.sersic_max < self.sersic_min:
            raise ValueError("sersic_max must be at least sersic_min")
        if self.tracking_angle_step != 0 and self.tracking_drift <= 0:
            raise ValueError("tracking_angle_step turns a drift: it needs tracking_drift > 0")
        if bool(self.known_orbits) != (self.known_count > 0):
            raise ValueError("known_orbits and known_count go together (an orbit file and how many of its objects to "
                             "place, > 0)")
        if self.tracked_target and (self.tracking_drift <= 0 or self.tracking_angle_step != 0):
            raise ValueError("tracked_target needs a tracking_drift (> 0) that does not turn (tracking_angle_step 0)")
        return self


@dataclass
class Scene:
    """Everything random about a simulated field, drawn once from the seed."""

    config: SimulationConfig
    plane: TangentPlane
    exposure_mjd: np.ndarray  # (n_exp,) mid-exposure MJD UTC
    pointing: np.ndarray  # (n_exp, 2) tangent-plane offsets of the pointing [arcsec]
    fwhm: np.ndarray  # (n_exp,)
    stars: Table
    galaxies: Table
    movers: Table
    transients: Table
    satellite: dict | None
    header_errors: np.ndarray  # (n_exp, 4): pointing error xi, eta [arcsec], rotation [deg], scale factor - 1
    known_orbits: Table | None = None  # orbits of the run's known_orbits.json (placed ones modified)

    @property
    def psfs(self) -> list:
        return [scene_psf(self.config, float(f)) for f in self.fwhm]


def scene_psf(config: SimulationConfig, fwhm: float):
    """The PSF of an exposure of FWHM ``fwhm`` [px] under ``config``'s PSF model."""
    if config.psf_model == "moffat":
        return MoffatPSF(fwhm=fwhm, beta=config.moffat_beta, ellipticity=config.psf_ellipticity)
    return DoubleGaussianPSF(fwhm=fwhm, wing_fraction=config.psf_wing_fraction, wing_sigma=config.psf_wing_sigma,
                             ellipticity=config.psf_ellipticity)


def _ccd_grid(nccd: int) -> list[tuple[int, int]]:
    ncol = int(math.ceil(math.sqrt(nccd)))
    return [(k // ncol, k % ncol) for k in range(nccd)]


def _focal_plane(config: SimulationConfig):
    """Lower-left focal-plane position of each CCD and the plane's centre [px]."""
    grid = _ccd_grid(config.nccd)
    nrow = max(r for r, _ in grid) + 1
    ncol = max(c for _, c in grid) + 1
    width = ncol * config.nx + (ncol - 1) * config.ccd_gap
    height = nrow * config.ny + (nrow - 1) * config.ccd_gap
    origins = [(c * (config.nx + config.ccd_gap), r * (config.ny + config.ccd_gap)) for r, c in grid]
    names = [f"{r + 1}-{c + 1}" for r, c in grid]
    return names, origins, ((width - 1) / 2.0, (height - 1) / 2.0), (width, height)


DISTORTION_RADIUS = 2896.0  # px: corner of a 4096^2 CCD centred on the optical axis


def _distortion_sip(config: SimulationConfig, crpix, corner_radius: float = DISTORTION_RADIUS) -> Sip | None:
    """SIP distortion about the focal-plane centre: ``distortion`` px at ``corner_radius`` [px]."""
    if config.distortion <= 0:
        return None
    k = 0.8 * config.distortion / corner_radius**3  # radial cubic
    q = 0.2 * config.distortion / corner_radius**2  # a decentring-like quadratic term
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[3, 0] = a[1, 2] = k  # A_p_q multiplies u^p v^q
    b[2, 1] = b[0, 3] = k
    a[2, 0] = q
    b[1, 1] = q
    return Sip(a, b, None, None, crpix)


def ccd_wcs(config: SimulationConfig, plane: TangentPlane, origin, centre, offset, *, error=None, distorted=True) -> WCS:
    """WCS of one CCD for a pointing offset ``offset`` (xi, eta) [arcsec].

    Parameters
    ----------
    error : sequence of 4 floats, optional
        Header errors: pointing (xi, eta) [arcsec], rotation [deg], relative scale.
    distorted : bool
        Include the true SIP distortion (True for the truth, False for headers).
    """
    d_xi, d_eta, rot, dscale = (0.0, 0.0, 0.0, 0.0) if error is None else error
    ra, dec = plane.to_sky(np.array([offset[0] + d_xi]), np.array([offset[1] + d_eta]))
    w = WCS(naxis=2)
    crpix = [centre[0] - origin[0] + 1.0, centre[1] - origin[1] + 1.0]  # 1-based: focal-plane centre
    sip = None
    if distorted:
        sip = _distortion_sip(config, crpix)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip is not None else ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [float(ra[0]), float(dec[0])]
    scale = config.pixel_scale / 3600.0 * (1.0 + dscale)
    c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
    w.wcs.cd = np.array([[c, -s], [s, c]]) @ np.array([[-scale, 0.0], [0.0, scale]])
    w.wcs.crpix = crpix
    w.wcs.radesys = "ICRS"
    w.sip = sip
    w.wcs.set()
    return w


def draw_scene(config: SimulationConfig) -> Scene:
    """Draw the random content of a field (positions, fluxes, motions) from the seed."""
    rng = np.random.default_rng(config.seed)
    plane = TangentPlane(config.ra, config.dec)
    names, origins, centre, (width, height) = _focal_plane(config)
    t0 = Time(config.start, format="isot", scale="utc")
    starts = t0.mjd + np.arange(config.n_exposures) * config.cadence / 86400.0
    mids = starts + 0.5 * config.exptime / 86400.0
    pointing = rng.normal(0.0, config.dither, size=(config.n_exposures, 2))
    pointing[0] = 0.0
    fwhm = rng.uniform(config.fwhm_min, config.fwhm_max, size=config.n_exposures)
    s = config.pixel_scale
    # the region covered by any exposure, with a margin [arcsec]
    margin = 4.0 * config.dither + 20.0
    half_w = width * s / 2.0 + margin
    half_h = height * s / 2.0 + margin
    area_deg2 = (2 * half_w) * (2 * half_h) / 3600.0**2

    def uniform_positions(n):
        return rng.uniform(-half_w, half_w, n), rng.uniform(-half_h, half_h, n)

    # stars: dN/dm ~ 10^(slope m) between 14 and 26
    n_star = rng.poisson(config.star_density * area_deg2)
    u01 = rng.uniform(0.0, 1.0, n_star)
    if config.star_slope > 0:
        alpha = config.star_slope * math.log(10)
        umin, umax = math.exp(alpha * 14.0), math.exp(alpha * 26.0)
        star_mag = np.log(umin + u01 * (umax - umin)) / alpha
    else:
        star_mag = 14.0 + 12.0 * u01
    sx, sy = uniform_positions(n_star)
    stars = Table(
        {
            "xi": sx,
            "eta": sy,
            "mag": star_mag,
            "pmra": rng.normal(0.0, 6.0, n_star),
            "pmdec": rng.normal(-3.0, 6.0, n_star),
        }
    )
    # galaxies: exponential discs
    n_gal = rng.poisson(config.galaxy_density * area_deg2)
    gx, gy = uniform_positions(n_gal)
    galaxies = Table(
        {
            "xi": gx,
            "eta": gy,
            "mag": rng.uniform(20.0, 26.0, n_gal),
            "r_e": np.exp(rng.uniform(np.log(0.15), np.log(1.2), n_gal)),  # arcsec
            "q": rng.uniform(0.3, 1.0, n_gal),
            "pa": rng.uniform(0.0, np.pi, n_gal),
        }
    )
    # scene options beyond the original simulator draw from their own streams (the scene of a seed is unchanged
    # when they are at their defaults)
    galaxies["sersic"] = np.random.default_rng([config.seed, 8]).uniform(config.sersic_min, config.sersic_max, n_gal)
    # movers, positioned at the middle of the sequence
    n_mov = rng.poisson(config.movers_per_ccd * config.nccd * (config.nx * config.ny) / 2048.0**2)
    fast = rng.random(n_mov) < config.fast_fraction
    rate = np.where(
        fast,
        np.exp(rng.uniform(np.log(config.slow_rate_max), np.log(config.fast_rate_max), n_mov)),
        np.exp(rng.uniform(np.log(config.slow_rate_min), np.log(config.slow_rate_max), n_mov)),
    )
    pa = rng.uniform(0.0, 360.0, n_mov)
    if config.mover_directions == "ecliptic":
        drng = np.random.default_rng([config.seed, 9])
        backwards = drng.random(n_mov) >= config.retrograde_fraction
        pa = (config.ecliptic_pa + 180.0 * backwards + drng.normal(0.0, config.direction_spread, n_mov)) % 360.0
    mx = rng.uniform(-width * s / 2.0, width * s / 2.0, n_mov)
    my = rng.uniform(-height * s / 2.0, height * s / 2.0, n_mov)
    movers = Table(
        {
            "object": [f"SIM{k:05d}" for k in range(n_mov)],
            "xi": mx,
            "eta": my,
            "mag": rng.uniform(config.mover_mag_min, config.mover_mag_max, n_mov),
            "rate": rate,
            "pa": pa,
            "designation": np.full(n_mov, "", dtype="U48"),
        }
    )
    n_tr = rng.poisson(config.transients_per_ccd * config.nccd)
    tx, ty = uniform_positions(n_tr)
    transients = Table(
        {
            "xi": tx,
            "eta": ty,
            "mag": rng.uniform(20.0, 24.0, n_tr),
            "exposure": rng.integers(0, config.n_exposures, n_tr),
        }
    )
    satellite = None
    if config.satellite:
        angle = rng.uniform(0, np.pi)
        satellite = {
            "exposure": int(rng.integers(0, config.n_exposures)),
            "xi": float(rng.uniform(-width * s / 4, width * s / 4)),
            "eta": float(rng.uniform(-height * s / 4, height * s / 4)),
            "angle": float(angle),
            "mag_per_arcsec": 19.0,
        }
    tref = 0.5 * (mids[0] + mids[-1])
    if config.tracked_target and config.tracking_drift > 0:
        # the drift moves every star along +u on the detector: a target moving along -u as fast stays a point
        a = math.radians(config.tracking_angle)
        target = Table({"object": ["TARGET"], "xi": [0.0], "eta": [0.0], "mag": [20.0],
                        "rate": [config.tracking_drift / config.exptime * 3600.0],
                        "pa": [math.degrees(math.atan2(-math.cos(a), -math.sin(a))) % 360.0],
                        "designation": np.array([""], dtype="U48")})
        movers = vstack([movers, target]) if len(movers) else target
    known_orbits = None
    if config.known_orbits and config.known_count > 0:
        known_orbits, known_movers = _known_movers(config, plane, tref, width * s, height * s, rng)
        movers = vstack([movers, known_movers]) if len(known_movers) else movers
    movers.meta["tref_mjd"] = float(tref)
    # header WCS errors, per exposure, from their own stream (the scene content does not depend on them)
    erng = np.random.default_rng([config.seed, 7])
    radius = config.header_pointing_error * np.sqrt(erng.uniform(0, 1, config.n_exposures))
    phi = erng.uniform(0, 2 * np.pi, config.n_exposures)
    rotation = erng.uniform(-1, 1, config.n_exposures)
    scale = erng.uniform(-1, 1, config.n_exposures)
    if config.header_errors_at_max:
        radius = np.full(config.n_exposures, config.header_pointing_error)
        rotation, scale = np.sign(rotation), np.sign(scale)
    header_errors = np.column_stack(
        [
            radius * np.cos(phi),
            radius * np.sin(phi),
            rotation * config.header_rotation_error,
            scale * config.header_scale_error,
        ]
    )
    return Scene(config, plane, mids, pointing, fwhm, stars, galaxies, movers, transients, satellite, header_errors,
                 known_orbits)


def _known_movers(config: SimulationConfig, plane: TangentPlane, tref: float, width: float, height: float, rng):
    """Known objects from real orbits placed in the field: (all orbits, mover rows with designations)."""
    from ssodetect.known import Observer, predict, read_orbits
    from ssodetect.simulate.known import place_known_objects

    orbits = read_orbits(config.known_orbits)
    observer = Observer(fixed_position=tuple(config.observer_position) or None)
    n = config.known_count
    kx, ky = rng.uniform(-0.45 * width, 0.45 * width, n), rng.uniform(-0.45 * height, 0.45 * height, n)
    ra, dec = plane.to_sky(kx, ky)
    mags = rng.uniform(config.mover_mag_min, min(config.mover_mag_max, config.mover_mag_min + 2.5), n)
    orbits, placed = place_known_objects(orbits, n, tref, list(zip(ra, dec)), mags, observer, rng)
    rows = []
    for j in placed:
        pred = predict(orbits[j : j + 1], np.array([tref - 0.5 / 24.0, tref, tref + 0.5 / 24.0]), observer)
        x, y = plane.to_plane(np.asarray(pred["ra"]), np.asarray(pred["dec"]))
        vx, vy = x[2] - x[0], y[2] - y[0]  # arcsec/h
        rows.append({"object": f"KNO{len(rows):05d}", "xi": float(x[1]), "eta": float(y[1]), "mag": float(pred["V"][1]),
                     "rate": float(math.hypot(vx, vy)), "pa": float(math.degrees(math.atan2(vx, vy)) % 360.0),
                     "designation": str(orbits["designation"][j])})
    names = ["object", "xi", "eta", "mag", "rate", "pa", "designation"]
    table = Table(rows=[[r[k] for k in names] for r in rows], names=names,
                  dtype=[str, float, float, float, float, float, "U48"]) if rows else Table()
    return orbits, table


def mover_offsets(movers: Table, mjd) -> tuple[np.ndarray, np.ndarray]:
    """Tangent-plane positions (xi, eta) [arcsec] of movers at time(s) ``mjd``."""
    dt_h = (np.asarray(mjd) - movers.meta["tref_mjd"]) * 24.0
    pa = np.radians(movers["pa"])
    # position angle from north through east; xi grows to the east
    return (
        np.asarray(movers["xi"]) + movers["rate"] * np.sin(pa) * dt_h,
        np.asarray(movers["eta"]) + movers["rate"] * np.cos(pa) * dt_h,
    )


def sersic_b(n):
    """``b_n`` of a Sersic profile ``exp(-b_n (r / r_e)^(1/n))`` (half the light within ``r_e``; Ciotti & Bertin 1999)."""
    n = np.asarray(n, float)
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n**2)


def _line_kernel(dx: float, dy: float) -> np.ndarray:
    """A normalised kernel that smears an image along the segment ``(dx, dy)`` [px] centred on its middle pixel."""
    n = 2 * int(math.ceil(0.5 * max(abs(dx), abs(dy)))) + 3
    kernel = np.zeros((n, n))
    t = np.linspace(-0.5, 0.5, max(2, int(math.ceil(4.0 * math.hypot(dx, dy)))))
    xs, ys = n // 2 + t * dx, n // 2 + t * dy
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for ox, oy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (y0 + oy, x0 + ox), w)
    return kernel / kernel.sum()


def _render_galaxies(image, xs, ys, galaxies: Table, psf, scale: float, rng, drift=None) -> None:
    """Sersic profiles sampled on a 3x sub-grid per pixel, convolved with the PSF (and smeared along ``drift``
    ``(dx, dy)`` [px], a tracking drift, when given).

    A double-Gaussian PSF convolves with its core only (the original simulator); any other PSF with
    its full pixel-integrated stamp.
    """
    from scipy.ndimage import gaussian_filter
    from scipy.signal import oaconvolve

    ny, nx = image.shape
    layer = np.zeros_like(image, dtype=np.float64)
    sub = 3
    sersic = np.asarray(galaxies["sersic"], float) if "sersic" in galaxies.colnames else np.ones(len(galaxies))
    for x, y, g, n_s in zip(xs, ys, galaxies, sersic):
        r_e = g["r_e"] / scale  # half-light radius [px]
        b_n = float(sersic_b(n_s))
        r_px = r_e / 1.678  # exponential scale length: the stamp size of the original simulator
        half = int(min(60, math.ceil(6 * r_px * max(1.0, n_s) + 2)))
        ix, iy = int(round(x)), int(round(y))
        if ix + half < 0 or iy + half < 0 or ix - half >= nx or iy - half >= ny:
            continue
        n = 2 * half + 1
        offsets = (np.arange(n * sub) + 0.5) / sub - 0.5 - half
        yy, xx = np.meshgrid(offsets + iy - y, offsets + ix - x, indexing="ij")
        c, s_ = math.cos(g["pa"]), math.sin(g["pa"])
        u_ = xx * c + yy * s_
        v_ = (-xx * s_ + yy * c) / g["q"]
        radius = np.hypot(u_, v_)
        if n_s == 1.0:
            prof = np.exp(-radius / r_px)
        else:
            prof = np.exp(-b_n * (radius / r_e) ** (1.0 / n_s))
        prof = prof.reshape(n, sub, n, sub).sum(axis=(1, 3))
        prof *= g["flux"] / prof.sum()
        x0, y0 = ix - half, iy - half
        xa, xb, ya, yb = max(x0, 0), min(x0 + n, nx), max(y0, 0), min(y0 + n, ny)
        layer[ya:yb, xa:xb] += prof[ya - y0 : yb - y0, xa - x0 : xb - x0]
    if drift is not None and math.hypot(*drift) > 0.5:
        layer = oaconvolve(layer, _line_kernel(*drift), mode="same")
    if isinstance(psf, DoubleGaussianPSF) and psf.ellipticity == 0.0:
        image += gaussian_filter(layer, psf.sigma, mode="constant")
    else:
        image += oaconvolve(layer, psf_stamp(psf), mode="same")


def _cosmic_rays(shape, fraction: float, exptime: float, rng) -> np.ndarray:
    """Charge [e-] of cosmic-ray tracks: short straight paths, charge by path length in each pixel."""
    ny, nx = shape
    mean_length = 2.5
    n_events = rng.poisson(fraction * (exptime / 566.0) * nx * ny / (mean_length + 1.0))
    image = np.zeros(shape)
    if n_events == 0:
        return image
    length = rng.exponential(mean_length, n_events)
    angle = rng.uniform(0, 2 * np.pi, n_events)
    x0 = rng.uniform(-0.5, nx - 0.5, n_events)
    y0 = rng.uniform(-0.5, ny - 0.5, n_events)
    charge = rng.lognormal(math.log(1500.0), 0.7, n_events)
    nsub = np.maximum(1, np.ceil(length / 0.05)).astype(int)
    idx = np.repeat(np.arange(n_events), nsub)
    frac = (np.arange(idx.size) - np.repeat(np.cumsum(nsub) - nsub, nsub) + 0.5) / np.repeat(nsub, nsub)
    px = x0[idx] + frac * length[idx] * np.cos(angle[idx])
    py = y0[idx] + frac * length[idx] * np.sin(angle[idx])
    ix = np.floor(px + 0.5).astype(int)
    iy = np.floor(py + 0.5).astype(int)
    ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    np.add.at(image, (iy[ok], ix[ok]), (charge / nsub)[idx][ok])
    return image


def _bleed(electrons: np.ndarray, full_well: float) -> np.ndarray:
    """Clip at full well, spilling the excess charge up and down the column."""
    over = electrons > full_well
    if not over.any():
        return over
    for col in np.unique(np.nonzero(over)[1]):
        column = electrons[:, col]
        rows = np.nonzero(column > full_well)[0]
        excess = float(np.sum(column[rows] - full_well))
        column[rows] = full_well
        lo, hi = rows.min() - 1, rows.max() + 1
        ny = column.size
        while excess > 0 and (lo >= 0 or hi < ny):
            for r in (lo, hi):
                if 0 <= r < ny and excess > 0:
                    room = full_well - column[r]
                    take = min(room, excess / 2.0 if (lo >= 0 and hi < ny) else excess)
                    column[r] += take
                    excess -= take
            lo -= 1
            hi += 1
        electrons[:, col] = column
    return electrons >= full_well * 0.999


def limiting_magnitude(config: SimulationConfig, fwhm: float) -> float:
    """Single-exposure 5-sigma point-source limit (ideal PSF-weighted flux, background-limited) [mag]."""
    sky_e = config.exptime * 10 ** (-0.4 * (config.sky_mag - config.zp_electrons)) * config.pixel_scale**2
    var = sky_e + config.read_noise**2
    area = scene_psf(config, fwhm).effective_area()
    f5 = 5.0 * math.sqrt(var * area)
    return config.zp_electrons - 2.5 * math.log10(f5 / config.exptime)


def render_ccd(scene: Scene, exposure: int, ccd_index: int):
    """Render one CCD of one exposure.

    Returns
    -------
    sci, rms : ndarray (ny, nx) float32 [ADU]
    flg : ndarray (ny, nx) int16
    wcs : WCS
        The true WCS (TAN-SIP with the distortion); the header gets :func:`header_wcs`.
    truth : list of dict
        Mover positions on this CCD at mid-exposure.
    """
    cfg = scene.config
    names, origins, centre, _ = _focal_plane(cfg)
    origin = origins[ccd_index]
    offset = scene.pointing[exposure]
    wcs = ccd_wcs(cfg, scene.plane, origin, centre, offset)
    rng = np.random.default_rng([cfg.seed, exposure, ccd_index])
    psf = scene.psfs[exposure]
    shape = (cfg.ny, cfg.nx)
    mid = scene.exposure_mjd[exposure]
    exptime = cfg.exptime
    epoch_years = (mid - Time("2016-01-01T12:00:00", scale="tt").utc.mjd) / 365.25

    def to_pix(xi, eta):
        ra, dec = scene.plane.to_sky(np.asarray(xi, float), np.asarray(eta, float))
        x, y = wcs.all_world2pix(ra, dec, 0)
        return x, y

    def e_flux(mag):
        return exptime * 10 ** (-0.4 * (np.asarray(mag) - cfg.zp_electrons))

    electrons = np.zeros(shape)
    sky_e = exptime * 10 ** (-0.4 * (cfg.sky_mag - cfg.zp_electrons)) * cfg.pixel_scale**2
    electrons += sky_e
    pad = psf.radius + 2
    # stars at the observation epoch (proper motion from the 2016.0 reference positions)
    st = scene.stars
    xi = st["xi"] + st["pmra"] * 1e-3 * epoch_years
    eta = st["eta"] + st["pmdec"] * 1e-3 * epoch_years
    x, y = to_pix(xi, eta)
    inside = (x > -pad) & (x < cfg.nx + pad) & (y > -pad) & (y < cfg.ny + pad)
    # the telescope drifts: every sky source draws its own path lengthened by the drift, centred where it is at
    # mid-exposure (stars, galaxies and transients a trail, movers their trail plus the drift)
    h = 0.5 * cfg.tracking_drift
    angle = math.radians(cfg.tracking_angle + exposure * cfg.tracking_angle_step)
    ux, uy = math.cos(angle), math.sin(angle)
    if cfg.tracking_drift > 0:
        x0, y0 = to_pix(xi[inside] - h * ux, eta[inside] - h * uy)
        x1, y1 = to_pix(xi[inside] + h * ux, eta[inside] + h * uy)
        for k, f in enumerate(e_flux(st["mag"][inside])):
            splat(electrons, *trail_points(x0[k], y0[k], x1[k], y1[k], f), psf)
    else:
        splat(electrons, x[inside], y[inside], e_flux(st["mag"][inside]), psf)
    if cfg.spikes:
        # six diffraction spikes on the stars that saturate, 0.5 % of the flux each, length growing with flux
        bright = inside & (np.asarray(st["mag"]) < 17.5)
        for xs_, ys_, mag in zip(x[bright], y[bright], np.asarray(st["mag"])[bright]):
            length = 40.0 * 10 ** (-0.2 * (mag - 17.5))
            for k in range(6):
                a = math.radians(15.0 + 60.0 * k)
                px, py, pf = trail_points(xs_, ys_, xs_ + length * math.cos(a), ys_ + length * math.sin(a),
                                          0.005 * float(e_flux(mag)))
                splat(electrons, px, py, pf, psf)
    # galaxies
    gal = scene.galaxies
    gx, gy = to_pix(gal["xi"], gal["eta"])
    inside = (gx > -80) & (gx < cfg.nx + 80) & (gy > -80) & (gy < cfg.ny + 80)
    g_in = gal[inside]
    g_in["flux"] = e_flux(g_in["mag"])
    drift = None
    if cfg.tracking_drift > 0:  # (the drift in pixels at the CCD's centre: galaxies are drawn smeared by it)
        ra_c, dec_c = wcs.all_pix2world([0.5 * (cfg.nx - 1)], [0.5 * (cfg.ny - 1)], 0)
        xi_c, eta_c = scene.plane.to_plane(ra_c, dec_c)
        (ax, bx), (ay, by) = to_pix([xi_c[0] - h * ux, xi_c[0] + h * ux], [eta_c[0] - h * uy, eta_c[0] + h * uy])
        drift = (float(bx - ax), float(by - ay))
    _render_galaxies(electrons, gx[inside], gy[inside], g_in, psf, cfg.pixel_scale, rng, drift=drift)
    # transients of this exposure
    tr = scene.transients[scene.transients["exposure"] == exposure]
    if len(tr):
        if cfg.tracking_drift > 0:
            tx0, ty0 = to_pix(tr["xi"] - h * ux, tr["eta"] - h * uy)
            tx1, ty1 = to_pix(tr["xi"] + h * ux, tr["eta"] + h * uy)
            for k, f in enumerate(e_flux(tr["mag"])):
                splat(electrons, *trail_points(tx0[k], ty0[k], tx1[k], ty1[k], f), psf)
        else:
            tx, ty = to_pix(tr["xi"], tr["eta"])
            splat(electrons, tx, ty, e_flux(tr["mag"]), psf)
    # movers: trails from exposure start to end
    mv = scene.movers
    half = 0.5 * exptime / 86400.0
    (mxi0, meta0), (mxi1, meta1) = mover_offsets(mv, mid - half), mover_offsets(mv, mid + half)
    own = [to_pix(mxi0, meta0), to_pix(mxi1, meta1)]  # (the truth's trail: the mover's own motion)
    xs0, ys0 = to_pix(np.asarray(mxi0) - h * ux, np.asarray(meta0) - h * uy)
    xs1, ys1 = to_pix(np.asarray(mxi1) + h * ux, np.asarray(meta1) + h * uy)
    xm, ym = to_pix(*mover_offsets(mv, mid))
    truth = []
    flux = e_flux(mv["mag"])
    for k in range(len(mv)):
        lo_x, hi_x = min(xs0[k], xs1[k]), max(xs0[k], xs1[k])
        lo_y, hi_y = min(ys0[k], ys1[k]), max(ys0[k], ys1[k])
        if hi_x < -pad or lo_x > cfg.nx + pad or hi_y < -pad or lo_y > cfg.ny + pad:
            continue
        px, py, pf = trail_points(xs0[k], ys0[k], xs1[k], ys1[k], flux[k])
        splat(electrons, px, py, pf, psf)
        if -0.5 <= xm[k] < cfg.nx - 0.5 and -0.5 <= ym[k] < cfg.ny - 0.5:
            truth.append(
                {
                    "index": k,
                    "x": float(xm[k]),
                    "y": float(ym[k]),
                    "trail_length": float(math.hypot(own[1][0][k] - own[0][0][k], own[1][1][k] - own[0][1][k])),
                }
            )
    # satellite
    sat = scene.satellite
    if sat is not None and sat["exposure"] == exposure:
        # the stretch of the line beside this CCD (points far off a distorted WCS do not invert)
        reach = 1.5 * math.hypot(cfg.nx, cfg.ny) * cfg.pixel_scale
        c, s_ = math.cos(sat["angle"]), math.sin(sat["angle"])
        ra_c, dec_c = wcs.all_pix2world([0.5 * (cfg.nx - 1)], [0.5 * (cfg.ny - 1)], 0)
        xi_c, eta_c = scene.plane.to_plane(ra_c, dec_c)
        t0 = float((xi_c[0] - sat["xi"]) * c + (eta_c[0] - sat["eta"]) * s_)
        (ax, bx), (ay, by) = to_pix(
            [sat["xi"] + (t0 - reach) * c, sat["xi"] + (t0 + reach) * c],
            [sat["eta"] + (t0 - reach) * s_, sat["eta"] + (t0 + reach) * s_],
        )
        # clip the segment to the CCD (plus a margin) before sampling it
        length = math.hypot(bx - ax, by - ay)
        tt = np.linspace(0.0, 1.0, max(2, int(length / 0.5)))
        px, py = ax + tt * (bx - ax), ay + tt * (by - ay)
        keep = (px > -pad) & (px < cfg.nx + pad) & (py > -pad) & (py < cfg.ny + pad)
        if keep.any():
            per_px = exptime * 10 ** (-0.4 * (sat["mag_per_arcsec"] - cfg.zp_electrons)) * cfg.pixel_scale
            step = length / (tt.size - 1)
            splat(electrons, px[keep], py[keep], np.full(keep.sum(), per_px * step), psf)
    # photon noise on everything so far, then detector effects
    electrons = rng.poisson(np.clip(electrons, 0, None)).astype(np.float64)
    electrons += _cosmic_rays(shape, cfg.cosmic_fraction, exptime, rng)
    det_rng = np.random.default_rng([cfg.seed, 10_000 + ccd_index])  # fixed per CCD: same hot pixels every exposure
    n_hot = det_rng.poisson(cfg.hot_fraction * cfg.nx * cfg.ny)
    hx = det_rng.integers(0, cfg.nx, n_hot)
    hy = det_rng.integers(0, cfg.ny, n_hot)
    hot_rate = det_rng.lognormal(math.log(1.0), 1.0, n_hot)  # e-/s
    hot_flag = det_rng.random(n_hot) < cfg.hot_flagged
    electrons[hy, hx] += hot_rate * exptime
    saturated = _bleed(electrons, cfg.full_well)
    electrons += rng.normal(0.0, cfg.read_noise, shape)
    sci = (electrons / cfg.gain).astype(np.float32)
    rms = np.full(shape, math.sqrt(sky_e + cfg.read_noise**2) / cfg.gain, dtype=np.float32)
    flg = np.zeros(shape, np.int16)
    flg[hy[hot_flag], hx[hot_flag]] |= FLAG_HOT
    flg[saturated] |= FLAG_SATURATED
    return sci, rms, flg, wcs, truth


def header_wcs(scene: Scene, exposure: int, ccd_index: int) -> WCS:
    """The WCS written to the header: TAN without distortion, perturbed by the exposure's header errors."""
    cfg = scene.config
    _, origins, centre, _ = _focal_plane(cfg)
    return ccd_wcs(
        cfg, scene.plane, origins[ccd_index], centre, scene.pointing[exposure],
        error=scene.header_errors[exposure], distorted=False,
    )


def _primary_header(scene: Scene, exposure: int) -> fits.Header:
    cfg = scene.config
    start = Time(scene.exposure_mjd[exposure] - 0.5 * cfg.exptime / 86400.0, format="mjd", scale="utc")
    h = fits.Header()
    h["TELESCOP"] = (cfg.telescope, "simulated by ssodetect")
    h["INSTRUME"] = cfg.instrument
    h["FILTER"] = "VIS"
    h["DATE-OBS"] = (start.isot, "UTC start of exposure")
    h["MJD-OBS"] = (start.mjd, "UTC start of exposure [MJD]")
    h["EXPTIME"] = (cfg.exptime, "[s]")
    h["GAIN"] = (cfg.gain, "[e-/ADU]")
    h["RDNOISE"] = (cfg.read_noise, "[e-]")
    h["MAGZERO"] = (cfg.zp_electrons - 2.5 * math.log10(cfg.gain), "mag for 1 ADU/s")
    h["SATURATE"] = (cfg.full_well / cfg.gain * 0.999, "[ADU]")
    h["PSF_FWHM"] = (float(scene.fwhm[exposure]), "simulated PSF core FWHM [px]")
    h["RA"] = (cfg.ra, "[deg] field centre (nominal pointing)")
    h["DEC"] = (cfg.dec, "[deg] field centre (nominal pointing)")
    h["SIMSEED"] = cfg.seed
    for axis, value in zip("XYZ", cfg.observer_position):
        h[f"OBSPOS_{axis}"] = (float(value), "[km] geocentric ICRS position of the observatory")
    if cfg.tracked_target and cfg.tracking_drift > 0:
        # the telescope follows the target (along -u on the sky, xi east, eta north): its non-sidereal rate
        rate = cfg.tracking_drift / cfg.exptime * 3600.0
        a = math.radians(cfg.tracking_angle)
        h["RA_RATE"] = (-rate * math.cos(a), "[arcsec/h] tracking rate in RA, times cos(Dec)")
        h["DEC_RATE"] = (-rate * math.sin(a), "[arcsec/h] tracking rate in Dec")
    h["ORIGIN"] = f"ssodetect {__version__} simulate"
    return h


def reference_catalogue(scene: Scene) -> Table:
    """Gaia-DR3-like catalogue of the stars brighter than ``refcat_mag_limit`` (positions at epoch 2016.0)."""
    st = scene.stars
    bright = st["mag"] < scene.config.refcat_mag_limit
    rng = np.random.default_rng([scene.config.seed, 99])
    n = int(bright.sum())
    g = np.asarray(st["mag"][bright])
    err_mas = 0.02 + 0.5 * 10 ** (0.2 * (g - 21.0))
    ra, dec = scene.plane.to_sky(np.asarray(st["xi"][bright]), np.asarray(st["eta"][bright]))
    dra = rng.normal(0, err_mas) / 3.6e6 / np.cos(np.radians(dec))
    ddec = rng.normal(0, err_mas) / 3.6e6
    # tangent-plane proper motion -> pmra (includes cos dec) / pmdec: equal to first order in a small field
    return Table(
        {
            "source_id": np.arange(1, n + 1, dtype=np.int64) + 10**15,
            "ra": ra + dra,
            "dec": dec + ddec,
            "ra_error": err_mas,
            "dec_error": err_mas,
            "pmra": np.asarray(st["pmra"][bright]),
            "pmdec": np.asarray(st["pmdec"][bright]),
            "phot_g_mean_mag": g,
            "ref_epoch": np.full(n, 2016.0),
        },
        meta={"comment": "simulated Gaia DR3-like reference catalogue; ra/dec [deg] at ref_epoch, errors [mas], pm [mas/yr]"},
    )


def simulate(config: SimulationConfig, outdir: str | Path, *, progress: bool = False, scene: Scene | None = None) -> dict:
    """Simulate a sequence and write exposures, reference catalogue and truth.

    Parameters
    ----------
    config : SimulationConfig
    outdir : path
        Output directory: ``exp_NN.fits`` (MEF layout) or ``exp_NN_ccd_R-C.fits``
        (plain layout), ``refcat.ecsv``, ``truth.ecsv`` and ``truth_wcs.ecsv``
        (the true WCS of each CCD and exposure: columns ``exposure, ccd, nx,
        ny, wcs_header`` with the FITS header cards as one string); written atomically.
    progress : bool
        Show a progress bar.
    scene : Scene, optional
        The scene to render (drawn from ``config`` and then edited, e.g. a mover placed by a test); by
        default ``draw_scene(config)``.  Its ``config`` must be ``config``.

    Returns
    -------
    dict
        Summary: files written, 5-sigma limits, number of movers.
    """
    from tqdm import tqdm

    if not isinstance(config, SimulationConfig):  # (a dict raised AttributeError: 'dict' object has no attribute ...)
        raise ConfigError(f"simulate: the configuration must be a SimulationConfig, not {type(config).__name__} "
                          "(SimulationConfig(**settings), or family_member(n))")
    if not isinstance(outdir, (str, os.PathLike)):
        raise ConfigError(f"simulate: {outdir!r} is no output directory path")
    if scene is None:
        scene = draw_scene(config)
    elif scene.config != config:
        raise ValueError("simulate: the scene was drawn from another configuration")
    names, _, _, _ = _focal_plane(config)
    rows = []
    files = []
    truth_wcs = []
    with OutputStage(outdir, replace=True, kind="scene") as stage:
        jobs = [(e, c) for e in range(config.n_exposures) for c in range(config.nccd)]
        bar = tqdm(total=len(jobs), desc="simulate", unit="ccd", disable=not progress)
        for e in range(config.n_exposures):
            primary = _primary_header(scene, e)
            hdus = [fits.PrimaryHDU(header=primary)]
            for c, name in enumerate(names):
                sci, rms, flg, wcs, truth = render_ccd(scene, e, c)
                truth_wcs.append((e, name, config.nx, config.ny, wcs.to_header_string(relax=True)))
                ext = fits.Header()
                ext["CCDID"] = name
                if config.write_wcs:
                    cards = header_wcs(scene, e, c).to_header()
                    if e in config.broken_wcs_exposures:  # a singular matrix: the kind of header a broken pipeline writes
                        cards["CDELT1"] = cards["CDELT2"] = 0.0
                    ext.extend(cards)
                else:
                    ext["PIXSCALE"] = (config.pixel_scale, "[arcsec/pix] nominal")
                for t in truth:
                    rows.append((t["index"], e, name, t["x"], t["y"], t["trail_length"]))
                if config.layout == "mef":
                    hdus.append(fits.ImageHDU(sci, header=ext, name=f"{name}.SCI"))
                    hdus.append(fits.ImageHDU(rms, name=f"{name}.RMS"))
                    hdus.append(fits.ImageHDU(flg, name=f"{name}.FLG"))
                else:
                    h = primary.copy()
                    h.extend(ext)
                    fname = f"exp_{e:02d}_ccd_{name}.fits"
                    fits.PrimaryHDU(sci, header=h).writeto(stage.file(fname))
                    files.append(fname)
                bar.update(1)
            if config.layout == "mef":
                fname = f"exp_{e:02d}.fits"
                fits.HDUList(hdus).writeto(stage.file(fname))
                files.append(fname)
        bar.close()
        truth = _truth_table(scene, rows, names)
        # the frames' digests: ``evaluate`` refuses this truth for a run of other frames (another seed's)
        truth.meta["frames"] = {fname: sha256_file(stage.file(fname)) for fname in files}
        truth.write(stage.file("truth.ecsv"), format="ascii.ecsv")
        reference_catalogue(scene).write(stage.file("refcat.ecsv"), format="ascii.ecsv")
        if scene.known_orbits is not None:
            from ssodetect.known import write_sbdb

            write_sbdb(scene.known_orbits, stage.file("known_orbits.json"))
        Table(rows=truth_wcs, names=["exposure", "ccd", "nx", "ny", "wcs_header"]).write(
            stage.file("truth_wcs.ecsv"), format="ascii.ecsv"
        )
    log.info("simulated %d exposures x %d CCDs, %d movers", config.n_exposures, config.nccd, len(scene.movers))
    return {"files": files, "n_movers": len(scene.movers), "limit_5sigma": truth.meta["limit_5sigma"]}


def _truth_table(scene: Scene, rows, names) -> Table:
    cfg = scene.config
    mv = scene.movers
    n_exp = cfg.n_exposures
    xi, eta = mover_offsets(mv, scene.exposure_mjd[:, None])  # (n_exp, n_mov)
    on = {}
    for k, e, name, x, y, trail in rows:
        on[(k, e)] = (name, x, y, trail)
    out = []
    for k in range(len(mv)):
        ra, dec = scene.plane.to_sky(xi[:, k], eta[:, k])
        for e in range(n_exp):
            name, x, y, trail = on.get((k, e), ("", np.nan, np.nan, np.nan))
            trail_len = mv["rate"][k] * cfg.exptime / 3600.0 / cfg.pixel_scale
            out.append(
                (mv["object"][k], e, scene.exposure_mjd[e], ra[e], dec[e], name, x, y, mv["mag"][k], mv["rate"][k], mv["pa"][k], trail_len,
                 str(mv["designation"][k]))
            )
    names_ = ["object", "exposure", "mjd", "ra", "dec", "ccd", "x", "y", "mag", "rate", "pa", "trail_length", "designation"]
    if out:
        table = Table(rows=out, names=names_)
    else:
        table = Table(names=names_, dtype=[str, int, float, float, float, str, float, float, float, float, float, float, str])
    table["on_detector"] = np.isfinite(np.asarray(table["x"], float))
    limits = [limiting_magnitude(cfg, f) for f in scene.fwhm]
    table.meta.update(
        {
            "description": "simulated moving objects: one row per object and exposure; x, y 0-based pixels on 'ccd' "
            "at mid-exposure (NaN when off the detector); ra/dec [deg]; mjd UTC mid-exposure; "
            "rate [arcsec/h]; pa [deg, N through E]; trail_length [px]",
            "limit_5sigma": float(np.median(limits)),
            "limit_5sigma_per_exposure": [float(v) for v in limits],
            "seed": cfg.seed,
            "simulation": cfg.model_dump(),
        }
    )
    table["mjd"].unit = u.day
    return table
