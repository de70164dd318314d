"""Header interpretation: keyword fall-backs, observation times and quirky WCS.

Real headers are quirky.  This module handles the quirks explicitly instead of
letting astropy silently misread them:

* times in ``MJD-OBS``/``MJD_OBS``, ``DATE-OBS`` with or without a time part
  (completed by ``TIME-OBS``/``UT``/``UTSTART``/``UTCSTART``), old FITS
  ``DD/MM/YY`` dates (including the ``26/07/102`` years-since-1900 form),
  ``MIDTIMJD`` and ``JD``; whether a stamp is the start, middle or end of the
  exposure is read from the keyword and its comment;
* WCS values stored as strings, ``TAN`` with ``PVi_j`` polynomial terms
  (SCAMP's convention, which only applies as ``TPV``), ``TAN`` with SIP
  coefficients but no ``-SIP`` suffix, and SIP next to ``PV`` terms.
"""
from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass, replace

import numpy as np
from astropy.io import fits
from astropy import units as u
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning
from erfa import ErfaWarning

from ssodetect.config import IOConfig

__all__ = [
    "fits_text",
    "merge_headers",
    "world_to_pixels",
    "first_keyword",
    "ObservationTime",
    "observation_time",
    "conflicting_cards",
    "sanitize_wcs_header",
    "celestial_wcs",
    "wcs_frame_problem",
    "station_code",
    "telescope_aperture",
    "KNOWN_APERTURES",
    "wcs_from_header_string",
]

log = logging.getLogger(__name__)

_MID_KEYS = {"MIDTIMJD", "MJD-MID", "MJD_MID", "DATE-AVG", "MJD-AVG"}
_TIME_OF_DAY_KEYS = ("TIME-OBS", "TIME_OBS", "UTSTART", "UTCSTART", "UT", "UTC-OBS", "UTC_OBS", "UT-START")


def first_keyword(header: fits.Header, keys, default=None):
    """Value of the first keyword of ``keys`` present (and not blank) in ``header``."""
    for key in keys:
        if key in header:
            value = header[key]
            if isinstance(value, str):
                value = value.strip()
                if value == "":
                    continue
            if value is None:
                continue
            return value
    return default


@dataclass(frozen=True)
class ObservationTime:
    """Mid-exposure time and exposure length of one image.

    Attributes
    ----------
    mid : astropy.time.Time
        Mid-exposure time, scale UTC.
    exptime : float
        Exposure time [s].
    source : str
        Which keyword(s) the time came from (for provenance and messages).
    notes : tuple of str
        Time keywords that were present but unusable, or that disagree with the one used (for warnings).
    """

    mid: Time
    exptime: float
    source: str
    notes: tuple = ()


#: Time keywords of one header whose mid-exposure times differ by more than this [s] disagree (a warning; MJD-OBS
#: written with 5 decimals is good to 0.9 s).
TIME_AGREEMENT_S = 2.0

_ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{1,2}:\d{2}(:\d{2}(\.\d*)?)?)?Z?$")
_OLD_DATE_RE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{2,3})$")
_TOD_RE = re.compile(r"^(\d{1,2})[: ](\d{1,2})[: ](\d{1,2}(\.\d*)?)$")


def _parse_time_of_day(text: str) -> float | None:
    """Seconds since midnight from 'hh:mm:ss(.s)' (or space separated); None if not parseable."""
    match = _TOD_RE.match(text.strip())
    if not match:
        return None
    h, m, s = int(match.group(1)), int(match.group(2)), float(match.group(3))
    if h > 24 or m >= 60 or s >= 61:
        return None
    return h * 3600.0 + m * 60.0 + s


def _parse_date(text: str) -> tuple[str, bool]:
    """Normalise a FITS date string to ISO; returns (iso, has_time).

    ``DD/MM/YY`` is the pre-2000 FITS form (years 19YY); three-digit years are
    years since 1900 (``102`` is 2002), as written by software using ``tm_year``.
    """
    text = text.strip()
    match = _OLD_DATE_RE.match(text)
    if match:
        day, month, year = int(match.group(1)), int(match.group(2)), int(match.group(3))
        year = 1900 + year
        if not (1 <= month <= 12 and 1 <= day <= 31):
            raise ValueError(f"invalid date {text!r}")
        return f"{year:04d}-{month:02d}-{day:02d}", False
    if _ISO_RE.match(text):
        iso = text.rstrip("Z").replace(" ", "T")
        return iso, "T" in iso
    raise ValueError(f"unrecognised date {text!r}")


def _reference_kind(key: str, comment: str, policy: str) -> str:
    if policy != "auto":
        return policy
    comment = comment.lower()
    if key in _MID_KEYS or "mid" in comment or "center of exp" in comment or "centre of exp" in comment:
        return "mid"
    if re.search(r"\bend\b", comment):
        return "end"
    return "start"


#: TIMESYS values read exactly: the astropy scale and the seconds to add to reach it (GPS runs 19 s behind TAI).
_TIME_SCALES = {"utc": ("utc", 0.0), "tt": ("tt", 0.0), "tdt": ("tt", 0.0), "et": ("tt", 0.0), "tdb": ("tdb", 0.0),
                "tai": ("tai", 0.0), "iat": ("tai", 0.0), "gps": ("tai", 19.0), "tcg": ("tcg", 0.0),
                "tcb": ("tcb", 0.0)}


def _time_scale(header: fits.Header) -> tuple[str, float, str]:
    """The astropy time scale of a header's times (``TIMESYS``, UTC by default), the seconds to add to its values to
    reach that scale, and a note when the value is read approximately or not understood (UT1/UT/GMT as UTC, within
    0.9 s; anything else as UTC: said, never silently)."""
    raw = header.get("TIMESYS", "UTC")
    scale = str(raw).strip().lower()
    if scale in _TIME_SCALES:
        return (*_TIME_SCALES[scale], "")
    if scale in ("ut1", "ut", "gmt"):
        return "utc", 0.0, f"TIMESYS={raw!r} read as UTC (they differ by less than 0.9 s)"
    return "utc", 0.0, f"TIMESYS={raw!r} is not a time scale ssodetect knows (UTC, TT, TDB, TAI, GPS, TCG, TCB): read as UTC"


#: Exposure times [s] a header may give besides 0 (unknown): 1e-300 s overflowed magnitudes, 1e300 s put
#: mid-exposure beyond any date.
MIN_EXPTIME, MAX_EXPTIME = 1e-6, 1e7

#: Years an observation time may fall in (photographic plates to the far future); outside them a time keyword
#: is damaged (``MJD-OBS = 1e7`` is the year 29238), and is not used.
PLAUSIBLE_YEARS = (1800, 2300)


def _plausible_utc(t: Time, offset: float, what: str) -> Time:
    """``t`` + ``offset`` seconds as UTC (ISO format), refused outside :data:`PLAUSIBLE_YEARS` (called where
    :func:`observation_time` keeps ERFA's "dubious year" warnings, which name no file, from printing)."""
    t = t + offset * u.s
    year = float(t.tt.jyear)
    if not (np.isfinite(year) and PLAUSIBLE_YEARS[0] <= year <= PLAUSIBLE_YEARS[1]):
        raise ValueError(f"{what} is the year {math.floor(year)}, outside {PLAUSIBLE_YEARS[0]}-{PLAUSIBLE_YEARS[1]}")
    mid = t.utc
    mid.format = "isot"
    return mid


def observation_time(header: fits.Header, config: IOConfig, *, fallback: fits.Header | None = None) -> ObservationTime:
    """Mid-exposure UTC time and exposure length from a header.

    Parameters
    ----------
    header : astropy.io.fits.Header
        Header of the image (for a multi-extension file, the extension header).
    config : IOConfig
        Keyword lists and the time reference policy.
    fallback : Header, optional
        Second header searched for keywords missing from ``header`` (the primary
        header of a multi-extension file).

    Returns
    -------
    ObservationTime

    Raises
    ------
    ValueError
        No keyword gives a usable time, or the exposure time is negative.
    """
    with warnings.catch_warnings():
        # ERFA's "dubious year" for a date outside its leap-second table (DATE-OBS = '0001-01-01') names no file:
        # such a year is refused by _plausible_utc, with the keyword, and the caller names the file
        warnings.simplefilter("ignore", ErfaWarning)
        found = _observation_time(merge_headers(header, fallback), config)
    disagreement = _exptime_disagreement(header, fallback, config.exptime_keys, found.exptime)
    return replace(found, notes=found.notes + (disagreement,)) if disagreement else found


def _exptime_disagreement(header: fits.Header, fallback: fits.Header | None, keys, used: float) -> str:
    """A note when the exposure-time cards of ``header`` and ``fallback`` (every card, duplicates too) do not all
    give ``used`` [s]; empty when they agree."""
    values = []
    for where, hdr in (("extension" if fallback is not None else "header", header), ("primary header", fallback)):
        if hdr is None:
            continue
        for card in hdr.cards:
            if card.keyword in keys and not isinstance(card.value, (bool, np.bool_)):
                try:
                    value = float(card.value)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(value):
                    values.append(f"{card.keyword} = {value:g} s ({where})")
                    if not math.isclose(value, used, rel_tol=1e-6, abs_tol=1e-6):
                        values[-1] += " *"
    if not any(v.endswith(" *") for v in values):
        return ""
    return (f"exposure times disagree: {', '.join(v.rstrip(' *') for v in values)}; {used:g} s is used (the first "
            "card of the image's own header)")


#: WCS keywords checked for conflicting duplicates besides the configured ones (:func:`conflicting_cards`).
WCS_KEYS = ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2",
            "CDELT1", "CDELT2", "PC1_1", "PC1_2", "PC2_1", "PC2_2", "CROTA2", "EQUINOX", "RADESYS")


def _same_value(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return str(a).strip() == str(b).strip()
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0) or a == b
    except (TypeError, ValueError):
        return a == b


def conflicting_cards(header: fits.Header, config: IOConfig) -> list[str]:
    """Keywords ssodetect reads that ``header`` holds more than once with different values.

    astropy (and ssodetect) read the first card of a repeated keyword; a frame whose cards contradict each other
    about its time, filter, detector or WCS is said, with the values, instead of being read silently (campaign 34:
    a second MJD-OBS a day later, a second FILTER or CCDID, exit 0 without a word).  The exposure time has its own
    note (:func:`observation_time`, which also compares the primary header's cards).

    Returns
    -------
    list of str
        One note per such keyword (empty when none).
    """
    keys = [*config.time_keys, *config.gain_keys, *config.saturation_keys, *config.filter_keys,
            *config.obs_id_keys, *config.instrument_keys, *config.zeropoint_keys, *config.zeropoint_total_keys,
            *config.observer_position_keys, *config.tracking_rate_keys, *config.frame_type_keys,
            *config.detector_keys, *WCS_KEYS]
    notes = []
    for key in dict.fromkeys(k.upper() for k in keys):
        try:
            count = header.count(key)
        except (KeyError, ValueError):
            continue
        if count < 2:
            continue
        values = [header[(key, n)] for n in range(count)]
        if all(_same_value(values[0], v) for v in values[1:]):
            continue
        shown = ", ".join(repr(v)[:40] for v in values[:4]) + (", ..." if count > 4 else "")
        notes.append(f"{key} is given {count} times with different values ({shown}): the first is used")
    return notes


def _observation_time(merged: fits.Header, config: IOConfig) -> ObservationTime:
    """:func:`observation_time` of a merged header."""
    exptime = first_keyword(merged, config.exptime_keys, 0.0)
    if isinstance(exptime, (bool, np.bool_)):  # (T would read as 1 s)
        key = next((k for k in config.exptime_keys if k in merged and isinstance(merged[k], (bool, np.bool_))),
                   "EXPTIME")
        raise ValueError(f"exposure time {key} = {'T' if exptime else 'F'} is not a number")
    try:
        exptime = float(exptime)
    except (TypeError, ValueError):
        raise ValueError(f"exposure time {exptime!r} is not a number") from None
    if not np.isfinite(exptime) or exptime < 0 or exptime > MAX_EXPTIME or 0 < exptime < MIN_EXPTIME:
        raise ValueError(f"exposure time {exptime!r} is invalid (0, or {MIN_EXPTIME:g} s to {MAX_EXPTIME:g} s)")
    scale, shift, scale_note = _time_scale(merged)
    problems = [scale_note] if scale_note else []
    found = None
    for key in config.time_keys:
        if key not in merged:
            continue
        value = merged[key]
        comment = merged.comments[key] or ""
        try:
            if isinstance(value, (bool, np.bool_)):  # (T would read as MJD 1 or JD 1)
                raise ValueError(f"{'T' if value else 'F'} is not a time")
            if key.startswith("MJD") or key == "MIDTIMJD":
                t = Time(float(value), format="mjd", scale=scale)
            elif key.startswith("JD"):
                t = Time(float(value), format="jd", scale=scale)
            elif key in ("UTCSTART", "UTSTART"):
                date = first_keyword(merged, ("DATE-OBS", "DATE_OBS", "DATE"))
                seconds = _parse_time_of_day(str(value))
                if date is None or seconds is None:
                    raise ValueError("time of day without a date")
                iso, _ = _parse_date(str(date).split("T")[0])
                t = Time(iso + "T00:00:00", format="isot", scale=scale) + seconds * u.s
            else:
                iso, has_time = _parse_date(str(value))
                if not has_time:
                    tod = first_keyword(merged, _TIME_OF_DAY_KEYS)
                    seconds = _parse_time_of_day(str(tod)) if tod is not None else None
                    if seconds is None:
                        raise ValueError(f"{key}={value!r} has no time of day and no TIME-OBS/UT keyword")
                    t = Time(iso + "T00:00:00", format="isot", scale=scale) + seconds * u.s
                    key = f"{key}+time-of-day"
                else:
                    t = Time(iso, format="isot", scale=scale)
        except ValueError as exc:
            if found is None:  # a keyword preferred to the one used, unusable (a later one's problem does not matter)
                problems.append(f"{key}: {exc}")
            continue
        kind = _reference_kind(key.split("+")[0], comment, config.time_reference)
        offset = {"start": 0.5, "mid": 0.0, "end": -0.5}[kind] * exptime + shift
        try:
            mid = _plausible_utc(t, offset, f"{value!r}")
        except ValueError as exc:
            if found is None:
                problems.append(f"{key}: {exc}")
            continue
        if found is None:
            found = ObservationTime(mid=mid, exptime=exptime, source=f"{key} ({kind} of exposure)")
        elif abs(float((mid - found.mid).to_value(u.s))) > TIME_AGREEMENT_S:
            problems.append(f"{key} puts mid-exposure at {mid.isot}, {float((mid - found.mid).to_value(u.s)):+.1f} s "
                            f"from the {found.source.split(' ')[0]} used")
    if found is not None:
        return replace(found, notes=tuple(p if p.startswith("TIMESYS") else f"time keyword {p}" for p in problems))
    detail = "; ".join(problems) if problems else f"none of {', '.join(config.time_keys)} present"
    raise ValueError(f"no usable observation time ({detail})")


_WCS_NUMERIC = re.compile(
    r"^(CRVAL\d|CRPIX\d|CDELT\d|CROTA\d|CD\d_\d|PC\d_\d|PV\d_\d+|[AB]P?_\d+_\d+|[AB]P?_ORDER|EQUINOX|LONPOLE|LATPOLE)$"
)


def sanitize_wcs_header(header: fits.Header) -> tuple[fits.Header, list[str]]:
    """Copy of ``header`` with WCS quirks repaired explicitly.

    Parameters
    ----------
    header : Header
        Original header (not modified).

    Returns
    -------
    fixed : Header
        Repaired copy.
    notes : list of str
        One line per repair made (logged by the caller).
    """
    fixed = header.copy()
    notes: list[str] = []
    for key in list(fixed.keys()):
        if _WCS_NUMERIC.match(key) and isinstance(fixed[key], str):
            text = fixed[key].strip()
            try:
                fixed[key] = int(text) if key.endswith("ORDER") else float(text)
            except ValueError:
                notes.append(f"{key}={text!r} is not a number; removed")
                del fixed[key]
                continue
            notes.append(f"{key} stored as a string; read as a number")
    for key in ("CUNIT1", "CUNIT2"):
        unit = str(fixed.get(key, "")).strip()
        if unit.lower() in ("degree", "degrees", "degs"):
            fixed[key] = "deg"
            notes.append(f"{key}={unit!r} read as 'deg'")
    for key in ("CTYPE1", "CTYPE2"):
        value = fixed.get(key)
        if isinstance(value, str) and value.strip() and value.strip() != value.strip().upper():
            fixed[key] = value.strip().upper()  # FITS names the axes in upper case; wcslib knows no 'ra---tan'
            notes.append(f"{key}={value!r} read as {value.strip().upper()!r}")
    ctype1 = str(fixed.get("CTYPE1", "")).strip().upper()
    ctype2 = str(fixed.get("CTYPE2", "")).strip().upper()
    has_sip = "A_ORDER" in fixed and "B_ORDER" in fixed
    pv_terms = [k for k in fixed.keys() if re.match(r"^PV[12]_\d+$", k)]
    if ctype1.endswith("-TAN") and ctype2.endswith("-TAN"):
        if has_sip:
            fixed["CTYPE1"] = ctype1 + "-SIP"
            fixed["CTYPE2"] = ctype2 + "-SIP"
            notes.append("TAN with SIP coefficients: CTYPE set to TAN-SIP")
        elif pv_terms:
            fixed["CTYPE1"] = ctype1[:-3] + "TPV"
            fixed["CTYPE2"] = ctype2[:-3] + "TPV"
            notes.append(f"TAN with {len(pv_terms)} PV distortion terms: read as TPV")
    if has_sip and pv_terms and fixed.get("CTYPE1", "").endswith("-SIP"):
        for key in pv_terms:
            del fixed[key]
        notes.append("PV terms next to SIP removed (SIP takes precedence)")
    if not has_sip and str(fixed.get("CTYPE1", "")).endswith("-SIP"):
        fixed["CTYPE1"] = str(fixed["CTYPE1"])[:-4]
        fixed["CTYPE2"] = str(fixed["CTYPE2"])[:-4]
        notes.append("-SIP suffix without SIP coefficients removed")
    return fixed, notes


#: Keywords a celestial WCS cannot do without a value of (removed as text that is no number, they would default to 0
#: or 1: a position at RA 0 or a scale of 1 deg/px, not a usable WCS).
_WCS_ESSENTIAL = re.compile(r"(CRVAL|CRPIX|CDELT)[12]|(CD|PC)[12]_[12]")


def wcs_frame_problem(wcs: WCS) -> str:
    """Why a celestial WCS's sky positions are not ICRS right ascension and declination, in that axis order (as
    every later step reads them); empty when they are.  ICRS, and FK5 at equinox J2000 (within ~0.02" of ICRS), are
    taken; galactic or ecliptic axes, Dec before RA, FK4 (B1950) or another equinox are not: their positions would
    be off by up to a degree, or swapped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            wcs.wcs.set()
        except Exception as exc:  # wcslib's errors for inconsistent frames
            return f"WCS cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())})"
    axes = [wcs.wcs.ctype[i].split("-")[0].upper() for i in (0, 1)]
    if axes != ["RA", "DEC"]:
        return (f"its sky axes are CTYPE1/CTYPE2 = {'/'.join(axes)}, not RA/DEC: only equatorial coordinates "
                "(ICRS or FK5 J2000) with RA first are read")
    radesys = str(wcs.wcs.radesys).strip().upper()
    equinox = float(wcs.wcs.equinox)
    if radesys in ("", "ICRS") or (radesys == "FK5" and (not math.isfinite(equinox) or abs(equinox - 2000.0) < 0.01)):
        return ""
    said = f"RADESYS = {radesys}" + (f", EQUINOX = {equinox:g}" if math.isfinite(equinox) else "")
    return f"its reference frame ({said}) is not ICRS or FK5 J2000: its positions would be off by up to a degree"


#: Highest SIP polynomial order a header WCS may have (``A_ORDER``, ``B_ORDER``, ``AP_ORDER``, ``BP_ORDER``).
MAX_SIP_ORDER = 20


def celestial_wcs(header: fits.Header, *, shape: tuple[int, int]) -> tuple[WCS | None, str]:
    """Celestial WCS of an image, or ``None`` and the reason it is unusable.

    Parameters
    ----------
    header : Header
        Image header (sanitised first with :func:`sanitize_wcs_header`).
    shape : (ny, nx)
        Image shape, used to check that the WCS maps the image to finite,
        sensible sky positions.

    Returns
    -------
    wcs : astropy.wcs.WCS or None
    reason : str
        Empty when the WCS is usable; otherwise why not.
    """
    for key in header.keys():  # a reference point or matrix given as text or a logical that is no finite number
        value = header[key]
        if _WCS_ESSENTIAL.fullmatch(key) and not (isinstance(value, (int, float, np.integer, np.floating))
                                                  and not isinstance(value, (bool, np.bool_))):
            try:  # text that reads as a number is a number stored as a string; a logical or complex value is not
                finite = isinstance(value, str) and math.isfinite(float(value.strip()))
            except ValueError:
                finite = False
            if not finite:
                return None, f"{key} = {value!r} is not a finite number"
    sip = any(str(header.get(f"CTYPE{i}", "")).strip().upper().endswith("-SIP") for i in (1, 2))
    for key in ("A_ORDER", "B_ORDER", "AP_ORDER", "BP_ORDER") if sip else ():
        # every coefficient of a SIP polynomial is evaluated at every pixel mapped: an order of 5000 held a run for
        # more than 5 minutes and 1.3 GB (campaign 30); real distortions are of order 2-9
        order = header.get(key)
        if order is None:
            continue
        if not isinstance(order, (int, np.integer)) or isinstance(order, (bool, np.bool_)) \
                or not 0 <= order <= MAX_SIP_ORDER:
            return None, f"{key} = {order!r} is no SIP order (an integer of 0-{MAX_SIP_ORDER})"
    fixed, notes = sanitize_wcs_header(header)
    for note in notes:
        log.debug("WCS repair: %s", note)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)  # another card not to the standard (EXPTIME = 1e5)
        try:
            wcs = WCS(fixed, naxis=2, relax=True)
        except Exception as exc:  # astropy raises many exception types for bad WCS
            # wcslib's messages run over several lines, with source locations: keep what they say, on one line
            said = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("ERROR")]
            return None, f"WCS cannot be read ({type(exc).__name__}: {' '.join(said) or str(exc).strip()})"
    if not wcs.has_celestial:
        return None, "no celestial WCS (CTYPE1/CTYPE2 missing or not RA/Dec)"
    frame = wcs_frame_problem(wcs)
    if frame:
        return None, frame
    ny, nx = shape
    probe_x = np.array([0, nx - 1, 0, nx - 1, (nx - 1) / 2])
    probe_y = np.array([0, 0, ny - 1, ny - 1, (ny - 1) / 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ra, dec = wcs.all_pix2world(probe_x, probe_y, 0)
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        return None, "WCS gives no finite sky position at the image corners"
    scale = np.sqrt(np.abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0
    if not (1e-4 < scale < 3600):
        return None, f"WCS pixel scale {scale:.3g} arcsec/px is not plausible"
    # the image's diagonal on the sky against its linear part: a distortion that collapses the image (TPV without
    # its PV terms maps every pixel to one point) or blows it up is no WCS of this image
    c1, c2 = np.radians([ra[0], dec[0]]), np.radians([ra[3], dec[3]])
    cos_sep = (math.sin(c1[1]) * math.sin(c2[1])
               + math.cos(c1[1]) * math.cos(c2[1]) * math.cos(c1[0] - c2[0]))
    diagonal = math.degrees(math.acos(min(1.0, max(-1.0, cos_sep)))) * 3600.0
    linear = math.hypot(nx - 1, ny - 1) * scale
    if linear > 0 and not 0.5 <= diagonal / linear <= 2.0:
        return None, (f"its image diagonal spans {diagonal:.4g}\" on the sky where its pixel scale gives {linear:.4g}\" "
                      f"(CTYPE1 = {str(header.get('CTYPE1', '')).strip()}: a distortion without its terms?): the header "
                      "WCS is unusable")
    if wcs.sip is not None or wcs.wcs.ctype[0].endswith(("-TPV", "-TPD", "-ZPN")):
        # a distortion that folds the image over (SIP A_2_0 = 0.01 on 512 px) has no inverse there: every later
        # sky-to-pixel step would fail (astropy's NoConvergence) or put stars on the wrong pixels
        edge_x = np.array([0, (nx - 1) / 2, nx - 1, 0, nx - 1, (nx - 1) / 4, 3 * (nx - 1) / 4])
        edge_y = np.array([(ny - 1) / 2, 0, (ny - 1) / 2, ny - 1, ny - 1, (ny - 1) / 4, 3 * (ny - 1) / 4])
        px, py = np.concatenate([probe_x, edge_x]), np.concatenate([probe_y, edge_y])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                ra, dec = wcs.all_pix2world(px, py, 0)
                back_x, back_y = wcs.all_world2pix(ra, dec, 0, quiet=True)
                miss = float(np.max(np.hypot(back_x - px, back_y - py)))
            except Exception:  # astropy's NoConvergence, or wcslib's errors: no inverse either way
                miss = float("nan")
        if not (np.isfinite(miss) and miss < 0.01):
            return None, ("its distortion (SIP/TPV) cannot be inverted over the image (sky to pixels misses by "
                          f"{miss:.3g} px): the header WCS is unusable")
    return wcs, ""


_CODE_IN_TEXT = re.compile(r"\(\s*([0-9A-Z][0-9A-Z]{2})\s*\)")


def station_code(header, keys=("MPCCODE", "MPC-CODE", "MPC_CODE", "OBSCODE", "SITECODE", "STN"),
                 problems: list[str] | None = None) -> str | None:
    """MPC observatory code from a header: a code keyword, or a 3-character code in parentheses in
    ``ORIGIN``/``OBSERVAT``/``SITENAME`` (e.g. 'MIT Wallace Astrophysical Observatory (810)'); None otherwise.
    A code keyword whose value is no code is appended to ``problems`` (when given), one line each."""
    for key in keys:
        if key not in header:
            continue
        value = str(header.get(key, "")).strip().upper()
        if re.fullmatch(r"[0-9A-Z][0-9A-Z]{2}", value):
            return value
        if problems is not None:
            problems.append(f"{key} = {ascii(header[key])} is no MPC observatory code (three digits or capital "
                            "letters): not used")
    for key in ("OBSERVAT", "ORIGIN", "SITENAME"):
        match = _CODE_IN_TEXT.search(str(header.get(key, "")))
        if match:
            return match.group(1)
    return None


#: Apertures [m] of telescopes whose frames do not carry APTDIA (matched as words in TELESCOP).
KNOWN_APERTURES = {"EUCLID": 1.2, "NEOSSAT": 0.15, "WISE": 0.4, "NEOWISE": 0.4, "HST": 2.4, "HUBBLE": 2.4,
                   "JWST": 6.5, "SPITZER": 0.85, "TESS": 0.105}


#: Apertures [m] taken from a header's APTDIA/APTAREA (a 1 cm lens to a 50 m telescope); others are named.
APERTURE_RANGE_M = (0.01, 50.0)


def telescope_aperture(header, problems: list[str] | None = None) -> tuple[float, str] | None:
    """Telescope aperture [m] and where it came from: ``APTDIA`` [mm], the diameter of ``APTAREA`` [mm²],
    or :data:`KNOWN_APERTURES` by ``TELESCOP``; None when nothing says it.

    An ``APTDIA`` or ``APTAREA`` that is no number or gives an aperture outside :data:`APERTURE_RANGE_M` is not
    used; why is appended to ``problems`` (when given), one line each.
    """
    lo, hi = APERTURE_RANGE_M
    for key, to_m in (("APTDIA", lambda v: v / 1000.0), ("APTAREA", lambda v: 2.0 * math.sqrt(v / math.pi) / 1000.0)):
        if key not in header:
            continue
        value = header[key]
        try:
            number = float(value)
            metres = to_m(number) if math.isfinite(number) and number > 0 else float("nan")
        except (TypeError, ValueError, OverflowError):
            metres = float("nan")
        if lo <= metres <= hi:
            return metres, key
        if problems is not None:
            problems.append(f"{key} = {value!r} is no telescope aperture ({lo * 1000:g}-{hi * 1000:g} mm across): "
                            "not used")
    words = re.split(r"[^0-9A-Z]+", str(header.get("TELESCOP", "")).upper())
    for word in words:
        if word in KNOWN_APERTURES:
            return KNOWN_APERTURES[word], f"TELESCOP {word}"
    return None


#: Tracking rate units -> arcsec/h.
TRACKING_RATE_UNITS = {"arcsec/h": 1.0, "arcsec/min": 60.0, "arcsec/s": 3600.0, "deg/d": 3600.0 / 24.0}
#: Largest tracking rate [arcsec/h] taken from a header (a geostationary satellite moves ~54,000"/h).
MAX_TRACKING_RATE = 1.0e6


def tracking_rate(header, keys, unit: str = "arcsec/h",
                  problems: list[str] | None = None) -> tuple[float, float, str] | None:
    """The telescope's non-sidereal tracking rate from a header: ``(RA rate * cos(Dec), Dec rate)`` [arcsec/h] and
    the keywords read (``"RA_RATE/DEC_RATE"``), from the first pair of ``keys`` (RA key, Dec key, RA key, ...) the
    header has both of; None when none.  A pair whose values are no finite numbers within
    :data:`MAX_TRACKING_RATE` is not used; why is appended to ``problems`` (when given), one line each.

    Parameters
    ----------
    header : fits.Header
    keys : list of str
        Keyword pairs, flattened.
    unit : str
        Unit of the values, a key of :data:`TRACKING_RATE_UNITS`.
    """
    factor = TRACKING_RATE_UNITS[unit]
    halves = []
    for ra_key, dec_key in zip(keys[0::2], keys[1::2]):
        if ra_key not in header or dec_key not in header:
            if ra_key in header or dec_key in header:
                there, missing = (ra_key, dec_key) if ra_key in header else (dec_key, ra_key)
                halves.append(f"{there} without {missing}: no tracking rate read from them")
            continue
        values = []
        for key in (ra_key, dec_key):
            value = header[key]
            try:
                number = float(value) * factor if not isinstance(value, (bool, np.bool_)) else float("nan")
            except (TypeError, ValueError, OverflowError):
                number = float("nan")
            values.append(number)
        if all(math.isfinite(v) and abs(v) <= MAX_TRACKING_RATE for v in values):
            return values[0], values[1], f"{ra_key}/{dec_key}"
        if problems is not None:
            problems.append(f"{ra_key} = {header[ra_key]!r}, {dec_key} = {header[dec_key]!r} is no tracking rate "
                            f"(finite numbers in {unit}, at most {MAX_TRACKING_RATE:g}\"/h): not used")
    if problems is not None:
        problems.extend(halves)
    return None


def wcs_from_header_string(text: str):
    """WCS from FITS cards in one string (None for an empty string); FITSFixedWarnings silenced."""
    if not text:
        return None
    import warnings

    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(fits.Header.fromstring(text), relax=True)


def frame_type(header: fits.Header, keys: list[str]) -> str:
    """Kind of a frame from the first type keyword present: light, bias, dark or flat.

    Values are matched by words ('Bias Frame', 'ZERO', 'dark', 'Flat Field', 'SKYFLAT',
    'DOMEFLAT', 'Light Frame', 'OBJECT', 'science'); a frame without a type keyword
    is a light frame.
    """
    for key in keys:
        if key in header:
            value = str(header[key]).strip().lower()
            if "bias" in value or "zero" in value:
                return "bias"
            if "dark" in value:
                return "dark"
            if "flat" in value:
                return "flat"
            return "light"
    return "light"


def fits_text(value, width: int | None = 68) -> str:
    """``value`` as a FITS header string: printable ASCII only (any other character, a newline or a letter with an
    accent in a file name, becomes ``?``), its last ``width`` characters (a path's file name end is kept)."""
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in str(value))
    return text[-width:] if width else text


def world_to_pixels(wcs, ra, dec):
    """``wcs.all_world2pix(ra, dec, 0)`` [px, 0-based], NaN where a point has no pixel on that frame (far outside
    it: another pointing; a SIN or SIP inversion that does not converge), without astropy's warnings about it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return wcs.all_world2pix(ra, dec, 0, quiet=True)


#: Commentary keywords: repeated by design, never a value to look up.
_COMMENTARY = ("", "COMMENT", "HISTORY")


def merge_headers(header, fallback=None):
    """One header for keyword lookups: every card of ``header``, and those of ``fallback`` (e.g. the primary HDU's)
    whose keywords ``header`` lacks (its commentary cards left out).  Linear in the number of cards (astropy's ``Header.extend(update=True)``
    re-indexes the header for every card: 20 s for a header of 20,000 cards)."""
    own = {k for k in header.keys() if k not in _COMMENTARY}
    cards = [] if fallback is None else [c for c in fallback.cards if c.keyword not in own and c.keyword not in _COMMENTARY]
    return fits.Header(cards + list(header.cards))
