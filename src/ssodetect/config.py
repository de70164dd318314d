"""Typed, validated run configuration (TOML file <-> pydantic models).

Every section is a pydantic model with ``extra="forbid"``: an unknown key is an
error, not silently ignored.  :func:`dump_toml` writes the full configuration with
each field's documentation as a comment; the same text is saved beside every
run's outputs (``config.toml``) so results carry their provenance.
"""
from __future__ import annotations

import math
import os
import re
import tomllib
import types
import typing
import unicodedata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ssodetect.errors import ConfigError

__all__ = [
    "IOConfig",
    "CleanConfig",
    "DetectConfig",
    "AstrometryConfig",
    "LinkConfig",
    "StreakConfig",
    "ReportConfig",
    "StackConfig",
    "MLConfig",
    "ExecutionConfig",
    "IntermediateConfig",
    "AlertConfig",
    "ProfileConfig",
    "Config",
    "load_config",
    "validation_problems",
    "dump_toml",
]


#: Most items a list setting may hold.
MAX_LIST_SETTING = 4096

#: Largest whole number a setting may hold (they reach C code as 32-bit integers: 1e20 was an OverflowError in sep);
#: bit masks may use 64 bits.
MAX_INT_SETTING = 2**31 - 1

#: The characters a photometric band name may hold in the reports (a '|' added a field to every ADES PSV row).
BAND_CHARACTERS = r"[A-Za-z0-9_.'-]"


#: Smallest and largest magnitude of a non-zero number setting.
MIN_FLOAT_SETTING = 1e-9
MAX_FLOAT_SETTING = 1e12
#: Narrowest PSF FWHM [px] a configuration may give (0: measured).
MIN_PSF_FWHM = 0.5
#: Pixel scales [arcsec/px] blind solving may search: from adaptive-optics cameras (~0.01"/px) to all-sky ones.
MIN_PIXEL_SCALE = 0.005
MAX_PIXEL_SCALE = 3600.0


class _Section(BaseModel):
    # no inf/nan settings (max_rate = inf would search forever); booleans must be true/false, not "yes"
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_logical_for_a_number(cls, value, info):
        # lax validation reads true as 1 (threshold = true ran at 1 sigma, drowning in detections), and the text
        # "3" as 3 (a quoted number in a TOML file is text: a setting written so was taken without a word)
        annotation = cls.model_fields[info.field_name].annotation
        if typing.get_origin(annotation) in (list, tuple) and isinstance(value, (list, tuple)):
            items = [a for a in typing.get_args(annotation) if a is not Ellipsis]
            numbers = bool(items) and all(_numeric(a) for a in items)
            checked = [(item, numbers) for item in value]
        else:
            checked = [(value, _numeric(annotation))]
        for item, number in checked:
            if number and isinstance(item, (bool, str)):
                kind = "a logical value" if isinstance(item, bool) else "text (quoted)"
                raise ValueError(f"{item!r} is {kind}, not a number")
        # lax validation also reads "yes", "no", 1 and 0 as true or false (keep = "no" was taken without a word)
        words = _logical_words(annotation)
        if words is not None and not isinstance(value, bool) and value not in words:
            kind = "text (quoted)" if isinstance(value, str) else "a number" if isinstance(value, (int, float)) else (
                type(value).__name__)
            choices = " or ".join(["true", "false"] + [repr(w) for w in words])
            raise ValueError(f"{value!r} is {kind}, not {choices}")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _bounded_integers(cls, value, info):
        if isinstance(value, int) and not isinstance(value, bool):
            limit = 2**63 - 1 if info.field_name.endswith("_mask") else MAX_INT_SETTING
            if abs(value) > limit:
                raise ValueError(f"{value} is too large (at most {limit})")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _sensible_floats(cls, value, info):
        # a denormal or astronomical value passed every bound (psf_fwhm = 1e-320, position_floor = 1e308) and the run
        # found nothing, with numpy overflow warnings for all explanation
        # (a list's items are coordinates and the like: only their size is bounded, 1e-12 km is a position's)
        listed = isinstance(value, (list, tuple))
        for item in value if listed else [value]:
            if isinstance(item, float) and item != 0.0 and not (
                    (listed or MIN_FLOAT_SETTING <= abs(item)) and abs(item) <= MAX_FLOAT_SETTING):
                raise ValueError(f"{item!r} is outside any sensible range (0, or {MIN_FLOAT_SETTING:g} to "
                                 f"{MAX_FLOAT_SETTING:g} in magnitude)")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _bounded_lists(cls, value, info):
        # 100,000 time keywords took 5 minutes (every header tried against each)
        if isinstance(value, (list, tuple)) and len(value) > MAX_LIST_SETTING:
            raise ValueError(f"{len(value)} items; a list setting holds at most {MAX_LIST_SETTING}")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _one_line_of_text(cls, value, info):
        # a newline or NUL in a header text broke the ADES PSV into extra lines and made the XML ill-formed; a
        # right-to-left override shows a name reversed in every report and terminal; NUL cut a keyword in C code
        # (a command's arguments are no text of ours: a script for `python -c` has its newlines and tabs)
        script = info.field_name == "command"
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and any(not _printable(c) and not (script and c in "\n\t") for c in item):
                raise ValueError(f"{ascii(item)} holds a control or direction-changing character (a newline, a tab, "
                                 "NUL, ESC, U+202E...): one line of printable text")
        return value


def _logical_words(annotation) -> tuple | None:
    """For a setting that is true or false (``bool``, or ``bool`` besides literal words such as ``"auto"``), the words
    it takes besides; None for any other setting."""
    if annotation is bool:
        return ()
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType) or bool not in args:
        return None
    words: list = []
    for a in args:
        if typing.get_origin(a) is Literal:
            words += list(typing.get_args(a))
        elif a is not bool and a is not type(None):
            return None
    return tuple(words)


def _numeric(annotation) -> bool:
    """Whether a setting's type is a number (int, float, or one of them or None)."""
    if annotation in (int, float):
        return True
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and bool(args) and all(
        a in (int, float) for a in args)


def _printable(c: str) -> bool:
    """Whether a character may stand in a setting's text: not a control (C0, C1, DEL), a format character
    (direction marks and overrides such as U+202E, a byte-order mark, zero-width characters), a surrogate or
    private-use code, or a line or paragraph separator."""
    return unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


class IOConfig(_Section):
    """Header keywords and FITS layout."""

    time_keys: list[str] = Field(
        default=["MJD-OBS", "MJD_OBS", "DATE-OBS", "DATE_OBS", "UTCSTART", "MIDTIMJD", "JD", "JD_OBS"], min_length=1,
        description="Header keywords tried in order for the exposure time stamp. DATE-OBS may carry "
        "a time or be completed by TIME-OBS/UT/UTC-OBS; old 'DD/MM/YY' dates are understood.",
    )
    time_reference: Literal["auto", "start", "mid", "end"] = Field(
        default="auto",
        description="What the time keyword refers to. 'auto': MIDTIMJD/MJD-MID/JD_OBS/DATE_OBS "
        "with 'midpoint' in the comment are mid-exposure, JD with 'end' in its comment is the end, "
        "everything else the start.",
    )
    exptime_keys: list[str] = Field(
        default=["EXPTIME", "EXPOSURE", "ITIME", "TEXP"], min_length=1, description="Exposure time keywords [s]."
    )
    gain_keys: list[str] = Field(
        default=["GAIN", "EGAIN", "CCDGAIN"], description="Gain keywords [e-/ADU]."
    )
    default_gain: float = Field(default=1.0, gt=0, description="Gain used when no gain keyword exists [e-/ADU].")
    saturation_keys: list[str] = Field(
        default=["SATURATE", "SATLEVEL", "DATAMAX"], description="Saturation level keywords [ADU]."
    )
    filter_keys: list[str] = Field(default=["FILTER", "FILTER1", "BAND"], description="Filter keywords.")
    allow_mixed_filters: bool = Field(
        default=False, description="Accept frames of different filters in one run (e.g. WISE W1 and W2): linked and "
        "identified across them, a warning, and no magnitudes in the ADES/MPC files (their band would be wrong).")
    obs_id_keys: list[str] = Field(
        default=["OBS_ID", "OBSID", "OBSERVATION_ID", "FIELD_ID", "FIELD", "OBJECT"],
        description="Keywords of the observation / field identifier (first exposure's headers), recorded in the run "
        "manifest and the alert; the --obs-id option wins.")
    instrument_keys: list[str] = Field(
        default=["INSTRUME", "TELESCOP"], description="Instrument keywords (mixing instruments in one run is an error)."
    )
    zeropoint_keys: list[str] = Field(
        default=["MAGZERO", "MAGZPT", "ZP", "PHOTZP"],
        description="Photometric zero point keywords: mag = ZP - 2.5 log10(flux_ADU / EXPTIME).",
    )
    zeropoint_total_keys: list[str] = Field(
        default=["MAGZP"],
        description="Zero point keywords for the exposure's total counts (WISE MAGZP): mag = ZP - 2.5 log10(flux_ADU); "
        "used when no zeropoint_keys keyword is present.",
    )
    default_zeropoint: float = Field(
        default=25.0, ge=5.0, le=50.0,  # (the range a header's zero point is taken from: io.frames.ZEROPOINT_RANGE)
        description="Zero point used when the header has none [mag for 1 ADU/s].",
    )
    observer_position_keys: list[str] = Field(
        default=["OBSPOS_X", "OBSPOS_Y", "OBSPOS_Z", "JPOS2_1", "JPOS2_2", "JPOS2_3"],
        description="Keyword triplets with the geocentric ICRF position [km] of a space-based observatory at "
        "mid-exposure; the first triplet a header has is used (JPOS2_*: NEOSSat's J2000 position at mid-exposure).",
    )

    @field_validator("observer_position_keys")
    @classmethod
    def _triplets(cls, value: list[str]) -> list[str]:
        if len(value) % 3:
            raise ValueError("observer_position_keys needs keyword triplets (x, y, z)")
        return value
    tracking_rate_keys: list[str] = Field(
        default=["RA_RATE", "DEC_RATE", "TRACKRA", "TRACKDEC"],
        description="Keyword pairs with the telescope's non-sidereal tracking rate during the exposure (RA rate "
        "times cos(Dec), Dec rate; in tracking_rate_unit); the first pair a header has is compared with the stars' "
        "measured trails (stars trail against the tracking), and a contradiction is a warning naming both.",
    )
    tracking_rate_unit: Literal["arcsec/h", "arcsec/min", "arcsec/s", "deg/d"] = Field(
        default="arcsec/h", description="Unit of the tracking_rate_keys values.")

    @field_validator("time_keys", "exptime_keys", "gain_keys", "saturation_keys", "filter_keys", "obs_id_keys",
                     "instrument_keys", "zeropoint_keys", "zeropoint_total_keys", "observer_position_keys",
                     "frame_type_keys", "detector_keys")
    @classmethod
    def _keywords(cls, value: list[str]) -> list[str]:
        for key in value:  # (an empty key or one with spaces is read from no header: the setting silently did nothing)
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,68}|HIERARCH [A-Za-z0-9_ .-]{1,60}", key):
                raise ValueError(f"{key!r} is no FITS keyword (letters, digits, '_' or '-', or HIERARCH ...)")
        return value

    @field_validator("tracking_rate_keys")
    @classmethod
    def _pairs(cls, value: list[str]) -> list[str]:
        if len(value) % 2:
            raise ValueError("tracking_rate_keys needs keyword pairs (RA rate, Dec rate)")
        for key in value:  # (a key no header can hold made the comparison silently never happen)
            if not re.fullmatch(r"[A-Z0-9_-]{1,8}|HIERARCH [A-Z0-9_ .-]{1,60}", key):
                raise ValueError(f"{key!r} is no FITS keyword (1-8 capital letters, digits, '_' or '-', or HIERARCH ...)")
        for ra_key, dec_key in zip(value[0::2], value[1::2]):
            if ra_key == dec_key:
                raise ValueError(f"{ra_key!r} twice in one pair: the RA and Dec rates are two keywords")
        return value
    frame_type_keys: list[str] = Field(
        default=["IMAGETYP", "OBSTYPE", "FRAMETYP", "IMAGTYPE"],
        description="Keywords naming a frame's kind (bias/zero, dark, flat, light/object); frames without one are light.",
    )
    detector_keys: list[str] = Field(
        default=["CCDID", "CCDNAME", "DETECTOR", "DETID", "CHIPID", "CCD_ID", "EXTNAME"],
        description="Keywords naming the CCD of a plain single-image file.",
    )
    flag_mask: int = Field(
        default=0xFFFFFFFF,
        ge=0, le=2**63 - 1,
        description="Bits of the FLG extension that mark a pixel as bad (any set bit masks the pixel; 63 bits at most).",
    )
    exposure_grouping_s: float = Field(
        default=2.0, gt=0, le=86400.0,
        description="Files whose mid-exposure times agree within this [s] form one exposure (at most a day)."
    )


class CleanConfig(_Section):
    """Optional full-frame cosmic-ray cleaning (astroscrappy / L.A.Cosmic)."""

    astroscrappy: bool = Field(
        default=False,
        description="Run astroscrappy on every CCD before detection. Off by default: cosmic rays are "
        "rejected per detection by shape, which is far cheaper.",
    )
    sigclip: float = Field(default=5.0, gt=0, description="astroscrappy sigclip.")
    objlim: float = Field(default=5.0, gt=0, description="astroscrappy objlim.")


class DetectConfig(_Section):
    """Background, source extraction and per-detection classification."""

    background_box: int = Field(default=64, ge=8, le=4096, description="Background mesh size [px].")
    background_filter: int = Field(default=3, ge=1, le=63, description="Median filter size on the background mesh [meshes].")
    threshold: float = Field(
        default=3.8, ge=1.0, le=1000.0,
        description="Detection threshold in sigma of the PSF-matched-filtered image (1-1000: below 1 the noise itself "
        "overflows the deblending).",
    )
    min_area: int = Field(default=3, ge=1, le=1_000_000, description="Minimum connected pixels above threshold.")
    deblend_nthresh: int = Field(default=32, ge=1, le=1024, description="sep deblending levels.")
    deblend_cont: float = Field(default=0.005, ge=0, le=1, description="sep deblending contrast.")
    halo_npix: int = Field(
        default=400, ge=0,
        description="Footprints of at least this many pixels (bright stars, big galaxies) get a local background: "
        "the image median-filtered over 4 FWHM is subtracted in their bounding boxes and the extraction repeated, so "
        "that sources on their halos are found (deblending never splits off a source fainter than deblend_cont of "
        "such a parent's flux). 0: off.",
    )
    psf_fwhm: float = Field(
        default=0.0,
        ge=0,
        le=50,
        description="PSF FWHM [px]; 0 = measure it per CCD from bright unsaturated stars (at most 50: the matched "
        "filter's kernel grows with it, and 1000 px held a run for minutes beyond reach of an interrupt).",
    )

    @field_validator("psf_fwhm")
    @classmethod
    def _psf_fwhm(cls, value: float) -> float:
        if 0.0 < value < MIN_PSF_FWHM:  # (1e-320 px: the matched filter divided by zero, and the run found nothing)
            raise ValueError(f"{value:g} px: 0 (measured) or at least {MIN_PSF_FWHM:g} px")
        return value

    psf_fallback_sigma: float = Field(
        default=0.75, gt=0, le=20, description="PSF Gaussian sigma [px] (FWHM / 2.355) used when a CCD has no star locus to "
        "measure it on; a weak locus (a handful of stars) is capped at it (an overestimate masks star cores as cosmic "
        "rays).")
    aperture_radius_fwhm: float = Field(
        default=1.75, gt=0, le=20, description="Photometric aperture radius in units of the PSF FWHM (trails get a "
        "pill-shaped aperture; at most 20)."
    )
    sharp_margin: float = Field(
        default=2.0,
        description="A detection is a cosmic ray / hot pixel when a sharp (sub-PSF) model fits it better "
        "than the PSF by more than this in chi2 (and it is not broader than the PSF).",
    )
    extended_margin: float = Field(
        default=10.0,
        description="A detection is extended (a galaxy, not a mover) when a model twice as broad as the PSF, "
        "drawn along its trail, fits better than the PSF by more than this in chi2 ...",
    )
    extended_fraction: float = Field(
        default=0.3, ge=0, description="... and by more than this fraction of SNR^2 ..."
    )
    extended_max_snr: float = Field(
        default=30.0, gt=0, description="... and its SNR is below this (brighter galaxies are removed as static)."
    )
    max_elongated_length: float = Field(
        default=150.0, gt=0, description="Detections longer than this [px] are streak segments (satellites), not slow movers."
    )
    trail_error_fraction: float = Field(
        default=0.04, ge=0, description="Systematic along-track centroid error of trails, as a fraction of their length."
    )
    centroid_error_floor: float = Field(default=0.05, ge=0, description="Floor added in quadrature to centroid errors [px].")


class LinkConfig(_Section):
    """Stationary-source removal and linking of movers."""

    min_rate: float = Field(default=0.3, ge=0, description="Slowest motion searched [arcsec/h].")
    max_rate: float = Field(default=12.0, gt=0, description="Fastest motion searched [arcsec/h].")
    min_detections: int = Field(default=3, ge=3, description="Detections needed for a tracklet.")
    min_total_snr: float = Field(
        default=0.0, ge=0,
        description="Tracklets whose combined signal-to-noise sqrt(sum snr^2) is below this are dropped (long sequences: "
        "an object too faint for one frame is found from many; chance alignments of noise add up to little).",
    )
    min_snr: float = Field(
        default=0.0, ge=0,
        description="Candidates below this signal-to-noise are not linked (0: all above the extraction threshold). "
        "Long sequences can afford 5: chance alignments of noise grow with the number of exposures.",
    )
    min_fraction: float = Field(
        default=0.5, ge=0, le=1, description="Detections needed as a fraction of the exposures within a tracklet's time span."
    )
    static_radius: float = Field(
        default=0.12,
        gt=0,
        description="A detection matched within this radius [arcsec] (or 3 sigma, if larger) in enough other "
        "exposures is a static source.",
    )
    static_min_matches: int = Field(
        default=2, ge=1, description="Number of other exposures that must match for a source to be static."
    )
    static_min_fraction: float = Field(
        default=0.5, ge=0, le=1,
        description="In long sequences, the fraction of the other exposures that must match for a source to be static "
        "(a slow mover matches itself in the neighbouring exposures only).",
    )
    detector_static_radius: float = Field(
        default=0.5, gt=0, le=50.0,
        description="Detections at the same CCD pixel [px] in several dithered exposures are detector artefacts."
    )
    match_sigma: float = Field(default=4.0, gt=0, description="Prediction tolerance in combined sigma.")
    match_floor: float = Field(default=0.03, ge=0, description="Tolerance floor added to predictions [arcsec].")
    position_floor: float = Field(
        default=0.2, ge=0, le=20.0,
        description="Systematic centroid error [px] added in quadrature to every candidate's position error for "
        "linking (blends with faint neighbours, short trails split by deblending, PSF mismatch: a mover at S/N 50 "
        "whose statistical error is 0.05 px is typically 0.1-0.3 px off its line in one exposure).",
    )
    max_chi2_dof: float = Field(default=4.0, gt=0, description="Largest reduced chi2 of the linear fit.")
    min_rate_significance: float = Field(
        default=5.0, ge=0, description="The fitted rate must exceed this many times its uncertainty (motion is real)."
    )
    max_occupied_fraction: float = Field(
        default=0.34,
        ge=0,
        le=1,
        description="Reject a tracklet when more than this fraction of its positions still hold a source in "
        "exposures taken after the object moved away (static sources strung into slow movers).",
    )
    max_flux_ratio: float = Field(
        default=4.0, gt=1, description="Largest ratio between the fluxes of detections of one tracklet."
    )
    flux_scatter: float = Field(
        default=0.25, gt=0,
        description="Relative scatter of a mover's flux between exposures beyond its noise (blends, cosmic-ray hits, "
        "rotation): a detection more than 3 standard deviations (noise and this scatter) from its tracklet's mean flux "
        "is dropped from it.",
    )
    blend_recovery: bool = Field(
        default=True,
        description="A slow mover detected cleanly in two exposures and merged with a brighter source in the others "
        "is measured there in the pixels: the static sky of the other exposures (resampled) is fitted together with "
        "the mover's PSF at its predicted position. A fast mover's trail seen whole in one exposure and cut into "
        "pieces by spikes, bleeds or stars in the others is measured the same way, both ways along its axis. Counts "
        "in provenance.json ('link', 'blends').",
    )
    blend_min_snr: float = Field(
        default=10.0, gt=0,
        description="Signal-to-noise ratio both detections of a pair need before the mover is looked for in blends, "
        "and that each measurement in a blend needs.",
    )
    occupancy_test: bool = Field(
        default=True,
        description="Measure each linked mover's (slow and fast) PSF/trail template flux at its positions in the "
        "exposures taken after it moved on (the pixels, not the detection list): a static source strung into a mover "
        "(a jittering galaxy, pieces of a diffraction spike) is still there, and is removed. Counts in "
        "provenance.json ('link', 'occupancy').",
    )
    occupancy_threshold: float = Field(
        default=0.35, gt=0, lt=1,
        description="Lower median over a mover's positions of the flux left behind (0 for a mover, 1 for a static "
        "source, after the mover's own overlap with its old position is taken out) above which it is static "
        "(when also occupancy_nsigma standard errors above 0).",
    )
    occupancy_nsigma: float = Field(
        default=3.0, gt=0, description="Significance of the flux left behind needed to call a mover static."
    )
    occupancy_max_overlap: float = Field(
        default=0.3, gt=0, lt=1,
        description="Exposures where the object still covers more than this fraction of its old position's template "
        "are not used by the occupancy test.",
    )
    occupancy_max_error: float = Field(
        default=0.35, gt=0,
        description="Positions whose occupancy score is less precise than this (1 sigma) are not used; a mover "
        "with fewer than two usable positions is kept (counted as untestable).",
    )
    missing_max_deficit: float = Field(
        default=3.0, gt=0,
        description="A mover not detected in some exposures is measured at its predicted positions there; it is "
        "removed when that flux is more than this many standard deviations (noise and flux_scatter) below its "
        "detections' (chance alignments of noise peaks and cosmic-ray residues are absent where a real object is "
        "not). Part of the occupancy test.",
    )
    # 0.1 until family member 336 (60 fast movers per CCD) accepted two chance tracklets of V 25.7 and 26.0 in its
    # 4 CCDs: at 0.1 per CCD, a Poisson mean of 0.4 per 4-CCD member makes two in the worst of ten members likely
    # (~45 %); at 0.05 one of the two went, and the slow movers' 50 % completeness fell by 0.04-0.08 mag (members
    # 331 and 336), V < 23.5 unchanged
    max_false_alarms: float = Field(
        default=0.05, gt=0,
        description="Expected number of chance-alignment tracklets a run may accept per CCD: a tracklet is kept when "
        "the number of seed pairs tried times the probability that unrelated candidates (at their local density and "
        "flux) line up as well as its members is at most this times the number of CCDs. The counts are written to "
        "provenance.json ('link').",
    )
    confirm_max_excess: float = Field(
        default=30.0, ge=0,
        description="A tracklet refused by the false-alarm control (max_false_alarms) by at most this factor, and "
        "not detected in some exposure, is confirmed on the pixels (occupancy step): kept when its light is measured "
        "where it is predicted in the exposures without a detection (at least confirm_min_snr, within "
        "missing_max_deficit standard deviations of its detections' flux, above or below) and it is shown to leave "
        "nothing behind where it was (occupancy median 2 standard errors below occupancy_threshold); dropped "
        "otherwise (counted). 0: no such confirmation.",
    )
    confirm_min_snr: float = Field(
        default=5.0, gt=0, description="Signal-to-noise of the flux measured at a doubtful tracklet's predicted "
        "positions needed to confirm it (confirm_max_excess).",
    )

    @model_validator(mode="after")
    def _rates(self) -> "LinkConfig":
        if self.max_rate <= self.min_rate:
            raise ValueError("max_rate must exceed min_rate")
        return self


class AstrometryConfig(_Section):
    """WCS and zero-point calibration of every CCD and exposure against the reference catalogue (--refcat)."""

    enabled: bool = Field(default=True, description="Fit the WCS of every CCD when a reference catalogue is given.")
    sip_order: int = Field(
        default=3, ge=1, le=5,
        description="Largest SIP distortion order (1 = linear TAN); the order used is chosen by leave-one-out "
        "cross-validation among those the stars allow.",
    )
    joint: bool = Field(
        default=True, description="Fit the exposures of one CCD together: shared distortion, per-exposure pointing."
    )
    max_pointing_error: float = Field(
        default=90.0, gt=0, description="Largest header pointing error searched [arcsec]."
    )
    max_rotation: float = Field(default=3.0, ge=0, description="Largest header rotation error searched [deg].")
    max_scale_error: float = Field(
        default=0.05, ge=0, lt=0.5, description="Largest relative header pixel-scale error searched."
    )
    pattern_radius: float = Field(
        default=0.6, gt=0, description="Match radius while pattern matching [arcsec] (covers unmodelled distortion)."
    )
    match_radius: float = Field(
        default=0.25, gt=0, description="Match radius between detections and reference stars once solved [arcsec]."
    )
    min_snr: float = Field(default=10.0, gt=0, description="Smallest SNR of a detection used as a reference star.")
    min_stars: int = Field(default=6, ge=3, description="Fewest matched stars for a solution.")
    clip: float = Field(default=3.0, gt=1, description="Sigma clipping of fit residuals.")
    max_rms: float = Field(
        default=0.3, gt=0, description="A solution whose residual rms (per axis) exceeds this is refused [arcsec]."
    )
    on_failure: Literal["drop", "header"] = Field(
        default="header",
        description="A CCD exposure that cannot be solved: keep its 'header' WCS (observations say wcs=header), "
        "or 'drop' its detections. Either way astrometry.ecsv and the log say which failed and why.",
    )
    blind: bool = Field(
        default=True, description="Solve blind when the header has no usable WCS or matching through it fails."
    )
    pixel_scale_range: list[float] = Field(
        default=[0.05, 5.0], min_length=2, max_length=2, description="Pixel scales searched by blind solving [arcsec/px]."
    )
    blind_max_tiles: int = Field(
        default=500, ge=1,
        description="Most catalogue tiles one blind solve tries (nearest to the header's pointing first); the "
        "reason of a CCD exposure left unsolved says when the search stopped at this limit.",
    )
    blind_pointing: list[float] = Field(
        default=[], max_length=3,
        description="Rough pointing for blind solving: [ra, dec, radius] [deg]; empty = whole catalogue.",
    )
    register_frames: bool = Field(
        default=True,
        description="Frames left without sky coordinates (no header WCS, no solution) are registered to each other by "
        "their stars and placed on a relative WCS: movers are linked and reported in pixels and relative positions "
        "(wcs = relative, no ADES).",
    )
    reference_wcs: str = Field(
        default="",
        description="For frames without WCS: a FITS file or text header (.wcs from astrometry.net, .head from SCAMP) "
        "with the WCS of one frame (reference_frame); the others are registered to it and get real sky positions "
        "(wcs = user, written to ADES).",
    )
    reference_frame: str = Field(
        default="", description="File name of the frame reference_wcs belongs to (default: the first frame in time)."
    )
    register_pixel_scale: float = Field(
        default=1.0, gt=0,
        description="Pixel scale [arcsec/px] of the relative WCS when the header gives none (PIXSCALE, XPIXSZ/FOCALLEN).",
    )
    trailed_stars: Literal["auto"] | bool = Field(
        default="auto",
        description="Stars are trailed (tracking drift, non-sidereal tracking, long exposures): use trail centres "
        "(trailed-PSF fits, mid-exposure positions) as the reference positions instead of point sources. auto: "
        "per CCD exposure, when its bright compact sources share one trail vector (streaks.field.star_trail; the "
        "choice and the vector are logged, kept in provenance.json and, with a reference catalogue, in "
        "astrometry.ecsv); true or false: every exposure.",
    )
    zeropoint: bool = Field(
        default=True, description="Fit the photometric zero point of every CCD exposure from the matched stars."
    )
    colour_term: float = Field(
        default=0.0, description="Image mag = G + zp_offset + colour_term * bp_rp (needs a bp_rp column)."
    )
    min_zeropoint_stars: int = Field(default=5, ge=2, description="Fewest stars for a zero point.")
    gaia_cache: str = Field(
        default="~/.cache/ssodetect/gaia",
        description="Where '--refcat gaia' keeps Gaia DR3 archive query results (queried once, online).",
    )
    gaia_mag_limit: float = Field(default=21.0, description="Faintest G of '--refcat gaia' queries.")

    @model_validator(mode="after")
    def _check(self) -> "AstrometryConfig":
        lo, hi = self.pixel_scale_range
        if not MIN_PIXEL_SCALE <= lo <= hi <= MAX_PIXEL_SCALE:
            # (a lower bound of 1e-6"/px passed and blind solving tried to tile the catalogue in 72 GiB)
            raise ValueError(f"pixel_scale_range must be [min, max] with {MIN_PIXEL_SCALE:g} <= min <= max <= "
                             f"{MAX_PIXEL_SCALE:g} [arcsec/px]")
        if self.blind_pointing:
            if len(self.blind_pointing) != 3:
                raise ValueError("blind_pointing must be empty or [ra, dec, radius]")
            ra, dec, radius = self.blind_pointing
            if not (0 <= ra < 360 and -90 <= dec <= 90 and 1.0 / 3600.0 <= radius <= 180):
                raise ValueError(f"blind_pointing {list(self.blind_pointing)}: ra must be 0-360 deg, dec -90-90 deg, "
                                 "radius 1\" (0.000278 deg) to 180 deg")
        return self


class StreakConfig(_Section):
    """Fast movers: trails joined, fitted and linked across exposures (they move too fast for [link])."""

    enabled: bool = Field(default=True, description="Measure trails with the trailed-PSF fit and link them.")
    min_length: float = Field(default=12.0, gt=0, description="Trails at least this long [px] are fitted and linked.")
    max_length: float = Field(
        default=800.0, gt=0, le=100000.0,
        description="Longer streaks [px] are satellites (crossing the detector), never linked.",
    )
    max_gap: float = Field(default=30.0, ge=0, description="Largest gap [px] between collinear fragments of one trail.")
    min_exposures: int = Field(default=2, ge=2, description="Fewest exposures of a linked fast mover.")
    rate_tolerance: float = Field(
        default=0.1, gt=0, description="Relative agreement between trail-implied and displacement rates."
    )
    angle_tolerance: float = Field(default=3.0, gt=0, description="Direction agreement [deg] (plus trail axis error).")
    max_chi2_dof: float = Field(default=10.0, gt=0, description="Largest reduced chi2 of a linked chain's line fit.")

    @model_validator(mode="after")
    def _lengths(self) -> "StreakConfig":
        if self.max_length <= self.min_length:
            raise ValueError("max_length must exceed min_length")
        return self


class CalibrateConfig(_Section):
    """Raw-frame calibration (bias, dark, flat; overscan and trim sections)."""

    enabled: bool = Field(
        default=True,
        description="Build masters from the calibration frames among the inputs (recognised by frame_type_keys) "
        "and the files listed below, and calibrate the light frames with them.",
    )
    bias: list[str] = Field(default=[], description="Bias frames (in addition to those recognised among the inputs).")
    dark: list[str] = Field(default=[], description="Dark frames (scaled by exposure time).")
    flat: list[str] = Field(default=[], description="Flat frames.")
    overscan: bool = Field(default=True, description="Subtract the BIASSEC overscan row by row when present.")
    trim: bool = Field(default=True, description="Cut images to TRIMSEC when present.")
    clip_sigma: float = Field(default=3.0, gt=0, description="Sigma clipping of the master combination.")
    max_bad_fraction: float = Field(
        default=0.01, ge=0, lt=1, description="Share of a calibration frame's pixels that may be NaN or infinite "
        "(a pre-reduced flat with blank corners); a frame with more is refused, one with any is named in a warning.")
    hot_pixels: bool = Field(
        default=True, description="Without a dark, find hot (and cold) pixels in the light frames themselves: pixels "
        "that stand out of their neighbours in the frames' median (the sky drifts, they stay) are treated as hits "
        "by the detection.")
    hot_min_frames: int = Field(default=8, ge=3, description="Fewest light frames of a CCD for the hot-pixel map.")
    hot_min_fraction: float = Field(
        default=0.01, ge=0, le=1, description="The map is used only when it flags at least this share of the pixels "
        "(a detector dominated by hot pixels, NEOSSat: 13 %); fewer are left to each frame's sharp-pixel test (a "
        "sharp star that stayed on its pixels all night would be flagged too).")


#: Largest geocentric distance [km] of an observer (about 670 au: a spacecraft at 1e30 km is a damaged header; ADES
#: writes a position in 13 characters).
MAX_OBSERVER_DISTANCE_KM = 1e11
#: Nearest a space-based observer may be to the Earth's centre [km] (the polar radius, 6357 km, less a margin): a
#: position of (0, 0, 0) had been reported in ADES as a spacecraft at the geocentre.
MIN_OBSERVER_DISTANCE_KM = 6300.0


def _three_numbers(value: list[float], message: str) -> list[float]:
    """An empty list, or exactly three numbers."""
    if value and len(value) != 3:
        raise ValueError(message)
    return value


class ReportConfig(_Section):
    """What the reports say about the observatory, the people and the measurements (ADES header and fields)."""

    station: str = Field(
        default="XXX", description="MPC observatory code (ADES stn). XXX: taken from the header (MPCCODE/OBSCODE, or "
        "'(NNN)' in ORIGIN/OBSERVAT) when there is one, else unassigned; set your own code."
    )
    observatory_name: str = Field(default="", description="Observatory name for the ADES header.")

    @field_validator("station")
    @classmethod
    def _station(cls, value: str) -> str:
        # the MPC's 80-column format holds three characters; ADES (StationType) three or four alphanumerics
        if not re.fullmatch(r"[0-9A-Z]{3}", value):
            raise ValueError(f"station {value!r} is not an MPC observatory code: three characters, digits and capital "
                             "letters (e.g. 500, I41, X05; XXX: from the headers)")
        return value

    submitter: str = Field(default="ssodetect user", description="Submitter name for the ADES header.")
    institution: str = Field(default="", description="Submitter's institution (ADES submitter/institution).")
    observers: list[str] = Field(default=[], description="Observers' names (ADES observers).")
    measurers: list[str] = Field(default=[], description="Measurers' names (ADES measurers; default: the submitter).")
    telescope_name: str = Field(default="", description="Telescope name (ADES telescope/name).")
    telescope_design: str = Field(default="Reflector", description="Telescope design (ADES telescope/design).")
    telescope_aperture: float = Field(
        default=0.0, ge=0, le=50.0, description="Aperture [m] (ADES telescope/aperture); 0: from the header (APTDIA [mm], "
        "APTAREA [mm2]) or the telescope's known aperture (TELESCOP), a warning when nothing gives it.")
    telescope_detector: str = Field(default="CCD", description="Detector type (ADES telescope/detector).")
    telescope_f_ratio: float = Field(default=0.0, ge=0, le=1000.0, description="Focal ratio (0: not written; else "
                                     "0.1-1000, the ADES field's one decimal and six characters).")

    @field_validator("telescope_aperture", "telescope_f_ratio")
    @classmethod
    def _written(cls, value: float, info) -> float:
        # ADES writes the aperture with 2 decimals, the focal ratio with 1, and both must be > 0 there: 0.004 m became
        # <aperture>0</aperture>, which the schema refuses
        least = 0.01 if info.field_name == "telescope_aperture" else 0.1
        if 0 < value < least:
            raise ValueError(f"{info.field_name} {value:g} would be written as 0: 0 (not given) or at least {least:g}")
        return value
    funding_source: str = Field(default="", description="ADES fundingSource (empty: not written).")
    comment: str = Field(default="", description="Free text for the ADES comment block.")
    mode: str = Field(default="CCD", pattern=r"^[A-Za-z0-9_]{1,3}$", description="ADES mode (CCD, CMO, ...).")
    astcat: str = Field(default="Gaia3", pattern=r"^[.A-Za-z0-9_]{1,8}$",
                        description="Catalogue of the reference catalogue given with --refcat (ADES "
                        "astCat of positions through a fitted WCS).")
    header_astcat: str = Field(default="UNK", pattern=r"^[.A-Za-z0-9_]{1,8}$",
                               description="ADES astCat of positions through a header or user WCS (e.g. 2MASS for WISE "
                               "frames); UNK: unknown (a warning).")
    photcat: str = Field(default="Gaia3", pattern=r"^[.A-Za-z0-9_]{0,8}$", description="Photometric catalogue of a zero point fitted to the reference "
                         "catalogue (ADES photCat; empty: not written; never written for a header zero point).")
    band: str = Field(default="", pattern=rf"^{BAND_CHARACTERS}{{0,8}}$",
                      description="Photometric band for ADES (empty: the image filter keyword).")
    time_decimals: int = Field(
        default=3, ge=0, le=6,
        description="Digits of seconds in obsTime: the precision of the frames' timing (3 = 1 ms; 0 = whole seconds).",
    )
    time_rms: float = Field(default=0.0, ge=0, lt=9999.9995,
                            description="Timing uncertainty [s] (ADES rmsTime; 0: not written; else 0.001-9999.999, "
                            "the field's three decimals and eight characters).")

    @field_validator("time_rms")
    @classmethod
    def _rms_written(cls, value: float) -> float:
        if 0 < value < 0.0005:  # written with 3 decimals: 0.000, which the schema refuses
            raise ValueError(f"time_rms {value:g} would be written as 0.000: 0 (not given) or at least 0.001")
        return value

    @field_validator("observatory_name", "submitter", "institution", "telescope_name", "telescope_design", "telescope_detector",
                     "funding_source", "comment", "observers", "measurers")
    @classmethod
    def _ades_text(cls, value, info):
        # ADES text: no '|' (the PSV separator), not only blanks, at most 100 characters (a design 25); a bad one
        # made observations.xml fail the schema and the PSV lines one field too many
        longest = 25 if info.field_name == "telescope_design" else 100
        for text in value if isinstance(value, list) else [value]:
            if info.field_name in ("observatory_name", "institution", "telescope_name", "funding_source",
                                   "comment") and text == "":
                continue
            if "|" in text or not text.strip() or (len(text) > longest and info.field_name != "comment"):
                raise ValueError(f"{info.field_name} {text[:40]!r}: ADES text holds no '|', not only blanks, and at "
                                 f"most {longest} characters")
        return value
    cutouts: bool = Field(default=True, description="Cut image stamps of every observation and bin a field overview "
                          "(cutouts.fits, overview.fits) for the HTML report.")
    cutout_size: int = Field(default=41, ge=9, le=401, description="Cutout side for point sources [px] (trails get longer ones).")
    observer_position: list[float] = Field(
        default=[], description="Geocentric ICRF position [km] (x, y, z) of a space-based observatory, used when the "
        "frames' headers do not carry one (io.observer_position_keys); empty: ground-based.",
    )

    @field_validator("observer_position")
    @classmethod
    def _three(cls, value: list[float]) -> list[float]:
        value = _three_numbers(value, "observer_position needs three numbers (x, y, z) in km")
        if value and not (all(math.isfinite(v) for v in value)
                          and MIN_OBSERVER_DISTANCE_KM <= math.hypot(*value) <= MAX_OBSERVER_DISTANCE_KM):
            raise ValueError(f"observer_position {value} is no geocentric position of a spacecraft: finite, "
                             f"{MIN_OBSERVER_DISTANCE_KM:g} to {MAX_OBSERVER_DISTANCE_KM:g} km from the Earth's centre")
        return value


class StackConfig(_Section):
    """Shift-and-stack search for movers fainter than one exposure shows (optional; CPU, or a GPU through PyTorch)."""

    enabled: bool = Field(default=False, description="Run the shift-and-stack stage after linking.")
    rate_min: float = Field(default=0.5, ge=0, le=1000, description="Slowest rate searched [arcsec/h].")
    rate_max: float = Field(default=10.0, gt=0, le=1000, description="Fastest rate searched [arcsec/h] (a search is "
                            "refused when its rates make more than 2e6 trajectories per pixel).")
    threshold: float = Field(
        default=7.5, gt=0, le=1000, description="Significance a stacked candidate needs [sigma]; it must grow with the number "
        "of trajectories tried (~1e11 per 4k CCD for 4 Euclid exposures up to 10\"/h) and with the artefacts left in "
        "the difference images (measured on simulated Euclid CCDs: 7.0 gives ~3, 7.5 ~1.5 false movers per 2048^2).",
    )
    grid_fraction: float = Field(
        default=0.5, ge=0.1, le=2, description="Velocity grid step: neighbouring grid trajectories part by at most this "
        "fraction of the PSF FWHM over the sequence across the motion (of FWHM + trail length along it).",
    )
    block: int = Field(default=512, ge=1, le=65536, description="Trajectories evaluated per kernel call (memory is bounded by the "
                       "psi/phi images of one kernel group, not by the number of trajectories).")
    backend: Literal["auto", "numba", "torch"] = Field(
        default="auto", description="Stack kernel: numba (CPU), torch (PyTorch from the [ml] extra; a CUDA GPU when "
        "present), or auto (torch when a CUDA GPU is usable, else numba).",
    )

    @model_validator(mode="after")
    def _rates(self) -> "StackConfig":
        if self.rate_max <= self.rate_min:
            raise ValueError("rate_max must exceed rate_min")
        return self


class MLConfig(_Section):
    """CNN vetting of every object found (PyTorch from the [ml] extra)."""

    enabled: bool = Field(default=False, description="Score every object with the CNN and remove those below threshold.")
    model: str = Field(default="builtin", description="Model file from 'ssodetect ml train'; builtin: the model shipped "
                       "with the package (Euclid-like 4-exposure sequences, 0.5-80\"/h).")
    threshold: float = Field(default=0.5, ge=0, le=1, description="Smallest mover probability kept.")
    batch: int = Field(default=256, ge=1, le=65536, description="Sequences per inference batch.")


class KnownConfig(_Section):
    """Identification of linked objects with catalogued orbits (offline: local orbit files)."""

    orbits: list[str] = Field(
        default=[], description="Orbit files: MPCORB.DAT (or an extract, optionally gzip, bzip2 or xz compressed) and/or JPL SBDB JSON "
        "(single-object API answers or Query API tables). Empty: no identification.",
    )
    site: list[float] = Field(
        default=[], description="Ground station: east longitude [deg], latitude [deg], height [m]; empty: from the "
        "header's OBSGEO-X/Y/Z, else the geocentre (spacecraft positions come from [report] observer_position or "
        "the headers).",
    )
    match_radius: float = Field(default=10.0, gt=0, description="Largest median observed-minus-predicted separation [arcsec].")


    rate_tolerance: float = Field(
        default=0.1, gt=0, description="Largest difference of observed and predicted motion vectors, relative to the "
        "predicted rate (or 5 sigma of the observed motion, whichever is larger).",
    )
    search_margin: float = Field(default=0.3, ge=0, description="Extra radius of the field search [deg].")
    skybot: bool = Field(
        default=False, description="Without orbit files, ask IMCCE's SkyBoT (online, astroquery) for the known objects "
        "in the field; the observatory code of [report] station is the location (500, the geocentre, when unknown).",
    )
    recovery_radius: float = Field(
        default=1.0, ge=0, description="Known objects predicted on the detectors but not linked are measured where "
        "predicted (PSF fit) when found within this radius [arcsec] in >= 2 exposures (0: no recovery).",
    )

    @field_validator("site")
    @classmethod
    def _site(cls, value: list[float]) -> list[float]:
        value = _three_numbers(value, "site needs three numbers: east longitude [deg], latitude [deg], height [m]")
        if value and not (-360 <= value[0] <= 360 and -90 <= value[1] <= 90 and -1e4 <= value[2] <= 1e5):
            raise ValueError(f"site {value}: east longitude -360-360 deg, latitude -90-90 deg, height -10000-100000 m")
        return value


class ExecutionConfig(_Section):
    """Where per-CCD work runs."""

    workers: int = Field(default=1, ge=1, le=256, description="Local worker processes (1 = serial; >1 = Dask LocalCluster).")
    scheduler: str = Field(default="", description="Address of a running Dask scheduler (overrides workers).")
    progress: bool = Field(default=True, description="Show a progress bar on the terminal.")


class IntermediateConfig(_Section):
    """Intermediate products kept under OUT/intermediate/<step>/ (for inspection and for other tools)."""

    keep: bool = Field(default=False, description="Keep them: cleaned images with masks and per-exposure source "
                       "catalogues (detect), refined WCS headers (astrometry), candidates before vetting (vet).")
    ldac: bool = Field(default=False, description="Also write each source catalogue as a SExtractor-compatible "
                       "FITS_LDAC file (SExtractor column names, 1-based pixels) that SCAMP and PSFEx read.")


class AlertConfig(_Section):
    """Alerts for moving objects not identified as known ones: alert.json, and optionally a command or an HTTP POST."""

    enabled: bool = Field(default=True, description="Write OUT/alert.json when the run finds unidentified movers.")
    command: list[str] = Field(
        default=[], description="Command run after the run, with the alert file's path appended as last argument "
        "(and in SSODETECT_ALERT), e.g. [\"notify-send\", \"ssodetect\"]; empty: none.")
    url: str = Field(default="", pattern=r"^(https?://.*)?$",
                     description="URL the alert document is POSTed to (JSON); empty: none.")
    retries: int = Field(default=3, ge=0, le=10, description="Retries after a failed delivery (command or POST).")
    timeout: float = Field(default=5.0, gt=0, le=120, description="Time limit of one delivery attempt [s].")
    backoff: float = Field(default=1.0, ge=0, le=60, description="Wait before the first retry [s], doubled each time.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        # (a URL without a host, "http://", was refused only when the run, done, tried to deliver its alert)
        from urllib.parse import urlsplit

        if value:
            try:
                parts = urlsplit(value)
                port = parts.port
            except ValueError:
                raise ValueError(f"{value!r} is no http(s) URL (its port or address cannot be read)") from None
            if parts.scheme not in ("http", "https") or not parts.hostname or (port is not None and port <= 0):
                raise ValueError(f"{value!r} is no http(s) URL with a host (e.g. https://alerts.example.org/sso)")
        return value

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str]) -> list[str]:
        if value and not value[0].strip():  # (an empty program name failed only after the whole run)
            raise ValueError("the command's first item, the program to run, is empty")
        return value


class ProfileConfig(_Section):
    """The instrument profile: settings for a kind of telescope, chosen from the frames' headers."""

    name: str = Field(
        default="auto", min_length=1,
        description="auto: chosen from the headers (TELESCOP/INSTRUME, pixel scale, exposures, observer); a "
        "built-in profile (euclid_vis, ground_ccd, small_space, wise); a profile TOML file; none: no profile "
        "settings. "
        "Settings given in this file or by command-line flags always win over the profile's.")


#: Settings that name a command, a network address or a file, or reach the network: taken from a configuration file
#: or the command line only, never from an instrument profile (a profile's ``[alerts] command`` had run when its
#: headers matched; its ``[known] skybot`` queried a service on any run whose headers matched) nor from the
#: console's launch form (``section.key``).
REACHING_SETTINGS = frozenset({
    "alerts.command", "alerts.url", "execution.scheduler", "known.orbits", "known.skybot", "calibrate.bias",
    "calibrate.dark", "calibrate.flat", "astrometry.reference_wcs", "astrometry.reference_frame",
    "astrometry.gaia_cache", "ml.model",
})


class Config(_Section):
    """Full ssodetect configuration."""

    profile: ProfileConfig = Field(default_factory=ProfileConfig)
    io: IOConfig = Field(default_factory=IOConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    astrometry: AstrometryConfig = Field(default_factory=AstrometryConfig)
    calibrate: CalibrateConfig = Field(default_factory=CalibrateConfig)
    link: LinkConfig = Field(default_factory=LinkConfig)
    streaks: StreakConfig = Field(default_factory=StreakConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    stack: StackConfig = Field(default_factory=StackConfig)
    ml: MLConfig = Field(default_factory=MLConfig)
    known: KnownConfig = Field(default_factory=KnownConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    intermediate: IntermediateConfig = Field(default_factory=IntermediateConfig)
    alerts: AlertConfig = Field(default_factory=AlertConfig)


#: Largest configuration file read [bytes].
MAX_CONFIG_BYTES = 1 << 20


def load_config(path: str | Path | None = None) -> Config:
    """Read a TOML configuration file; missing keys take their defaults.

    Parameters
    ----------
    path : str or Path or None
        TOML file. ``None`` returns the defaults.

    Raises
    ------
    ConfigError
        The file is missing, not TOML, or holds unknown keys / invalid values.
    """
    if path is None:
        return Config()
    if not isinstance(path, (str, os.PathLike)):  # (bytes or a number raised pathlib's own TypeError)
        raise ConfigError(f"load_config: {path!r} is no path of a configuration file (a str or a path)")
    if not str(path).strip():
        raise ConfigError(f"{str(path)!r}: an empty configuration file name")
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ConfigError(f"{path}: not a regular file (a FIFO, device or directory is not a configuration)")
    try:
        if path.exists() and path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes; a configuration is at most {MAX_CONFIG_BYTES}")
        # (an editor's "UTF-8 with BOM" puts U+FEFF first, which TOML parsers refuse as an invalid statement)
        data = tomllib.loads(path.read_text().removeprefix("\ufeff"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML (nested too deeply)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid configuration ({validation_problems(exc)})") from None


def validation_problems(exc: ValidationError) -> str:
    """A pydantic validation error as one line: ``section.key: message; ...`` (a whole-model check: ``message``)."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        given = err.get("input")
        if isinstance(given, float) and not math.isfinite(given) and "finite" not in message:
            # (NaN fails every bound: "should be <= 100000" said nothing of what was wrong: campaign 31)
            message = f"must be a finite number, not {given}"
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(config: Config, *, documented: bool = True, only_set: bool = False) -> str:
    """Serialise a configuration to TOML text.

    Parameters
    ----------
    config : Config
        Configuration to write.
    documented : bool
        Precede each section and key with its documentation as ``#`` comments.
    only_set : bool
        Write only the settings given explicitly (``model_fields_set``: a file's keys, a form's changes), so that
        the file read back leaves the rest to the defaults and the instrument profile.

    Returns
    -------
    str
        TOML that :func:`load_config` reads back to an equal configuration.
    """
    lines: list[str] = []
    if documented:
        lines.append(f"# ssodetect configuration. {Config.__doc__.strip()}")
        lines.append("")
    for section_name, section_field in Config.model_fields.items():
        section = getattr(config, section_name)
        chosen = section.model_fields_set if only_set else set(type(section).model_fields)
        if not chosen:
            continue
        if documented and type(section).__doc__:
            lines.append(f"# {type(section).__doc__.strip()}")
        lines.append(f"[{section_name}]")
        for name, field in type(section).model_fields.items():
            if name not in chosen:
                continue
            if documented and field.description:
                lines.append(f"# {field.description}")
            lines.append(f"{name} = {_toml_value(getattr(section, name))}")
        lines.append("")
    return "\n".join(lines)
