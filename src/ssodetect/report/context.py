"""The observing context of a run, for the report page's header block.

Pure functions over what a run recorded (``provenance.json``'s ``report_context``, the astrometry table, the
objects): when and where the frames were taken, through which filter and for how long, from which station, how
the positions and magnitudes were calibrated, how deep each CCD went, and how many objects were found.  A value
the frames did not give is shown as *not in the headers*, never made up; a value that is a configuration default
says so; a run made before a fact was recorded says *not recorded by this run*.

Times are UTC (MJD), angles in degrees, limiting magnitudes in the run's photometric system.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.time import Time

from ssodetect.known.propagate import earth_heliocentric

__all__ = ["HeaderRow", "limiting_magnitude", "ccd_limits", "field_centre", "sky_context", "header_rows", "NOT_IN_HEADERS",
           "NOT_RECORDED"]

NOT_IN_HEADERS = "not in the headers"
NOT_RECORDED = "not recorded by this run (made by an earlier version): regenerate by running it again"
#: Obliquity of the ecliptic at J2000 [deg] (IAU 2006).
OBLIQUITY = 23.4392794


@dataclass(frozen=True)
class HeaderRow:
    """One line of the header block: what, its value, and where the value came from (empty: the data)."""

    label: str
    value: str
    source: str = ""
    missing: bool = False  # the value is absent (not in the headers, not recorded, unassigned)


def limiting_magnitude(background_rms: float, psf_sigma: float, zeropoint: float, exptime: float) -> float:
    """5-sigma point-source limit [mag] of one CCD image from its measured noise and PSF.

    The optimal (PSF-weighted) flux of a Gaussian PSF of width ``psf_sigma`` [px] over background noise
    ``background_rms`` [image unit / px] has the noise of ``4 pi sigma^2`` pixels, so the 5-sigma flux is
    ``5 rms 2 sigma sqrt(pi)``; ``mag = zeropoint - 2.5 log10(flux / exptime)`` (the pipeline's convention;
    ``exptime`` [s], at least 1e-9 s as in the measurements).  NaN when a value is missing or not positive.
    """
    values = (background_rms, psf_sigma, zeropoint)
    if not all(v is not None and math.isfinite(float(v)) for v in values) or background_rms <= 0 or psf_sigma <= 0:
        return float("nan")
    flux = 5.0 * float(background_rms) * 2.0 * float(psf_sigma) * math.sqrt(math.pi)
    return float(zeropoint) - 2.5 * math.log10(flux / max(float(exptime or 0.0), 1e-9))


def ccd_limits(ccd_info: list, fitted: dict, exptimes: dict, default_zeropoint: float) -> tuple[dict, dict]:
    """Zero point of every CCD exposure and the median 5-sigma limit of every CCD.

    Parameters
    ----------
    ccd_info : list of dict
        Per CCD exposure diagnostics (``exposure``, ``ccd``, ``background_rms``, ``psf_sigma`` [px], ``zeropoint``
        from the header or the default).
    fitted : dict
        (exposure, ccd) -> zero point fitted to the reference catalogue (it wins; NaN ignored).
    exptimes : dict
        Exposure -> exposure time [s].
    default_zeropoint : float
        Used where neither gives one.

    Returns
    -------
    zeropoints : dict
        ``"exposure:ccd"`` -> zero point [mag].
    limits : dict
        CCD -> median over its exposures of :func:`limiting_magnitude` [mag] (CCDs without one left out).
    """
    zps: dict = {}
    limits: dict = {}
    for info in ccd_info:
        if "exposure" not in info or "ccd" not in info:
            continue
        zp = fitted.get((int(info["exposure"]), str(info["ccd"])))
        if zp is None or not math.isfinite(zp):
            zp = info.get("zeropoint")
        if zp is None or not math.isfinite(float(zp)):
            zp = default_zeropoint
        zps[f"{info['exposure']}:{info['ccd']}"] = float(zp)
        limit = limiting_magnitude(info.get("background_rms") or float("nan"), info.get("psf_sigma") or float("nan"),
                                   float(zp), exptimes.get(info["exposure"], 0.0))
        if math.isfinite(limit):
            limits.setdefault(str(info["ccd"]), []).append(limit)
    return zps, {ccd: float(np.median(v)) for ccd, v in limits.items()}


def field_centre(corners: list) -> tuple[float, float, float] | None:
    """Centre and radius of a field from its CCDs' sky positions.

    Parameters
    ----------
    corners : list of (ra, dec) arrays [deg]
        Sky positions of points of each CCD (e.g. its centre and corners).

    Returns
    -------
    (ra, dec, radius) [deg] or None
        The mean direction of all points and the largest distance of a point from it; None without points.
    """
    ra = np.concatenate([np.atleast_1d(np.asarray(c[0], float)) for c in corners]) if corners else np.zeros(0)
    dec = np.concatenate([np.atleast_1d(np.asarray(c[1], float)) for c in corners]) if corners else np.zeros(0)
    ok = np.isfinite(ra) & np.isfinite(dec)
    if not ok.any():
        return None
    r, d = np.radians(ra[ok]), np.radians(dec[ok])
    v = np.column_stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)]).sum(axis=0)
    v /= np.linalg.norm(v)
    ra0 = math.degrees(math.atan2(v[1], v[0])) % 360.0
    dec0 = math.degrees(math.asin(max(-1.0, min(1.0, v[2]))))
    cosines = np.cos(d) * np.cos(r) * v[0] + np.cos(d) * np.sin(r) * v[1] + np.sin(d) * v[2]
    radius = float(np.degrees(np.arccos(np.clip(cosines, -1, 1))).max())
    return ra0, dec0, radius


def sky_context(ra: float, dec: float, mjd_utc: float | None) -> dict:
    """Galactic and ecliptic latitude [deg] of a direction, and its solar elongation [deg] seen from the
    geocentre at ``mjd_utc`` (None: no elongation).  Offline: the Sun from astropy's built-in ephemeris."""
    coord = SkyCoord(ra, dec, unit="deg", frame="icrs")
    out = {"galactic_b": float(coord.galactic.b.deg)}
    eps = math.radians(OBLIQUITY)
    a, d = math.radians(ra), math.radians(dec)
    out["ecliptic_beta"] = math.degrees(math.asin(math.sin(d) * math.cos(eps) - math.cos(d) * math.sin(eps) * math.sin(a)))
    if mjd_utc is not None and math.isfinite(mjd_utc):
        sun = -earth_heliocentric(np.array([mjd_utc]))[0]  # the Sun seen from the Earth (ICRF, au)
        u = np.array([math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d)])
        out["elongation"] = math.degrees(math.acos(float(np.clip(np.dot(u, sun / np.linalg.norm(sun)), -1, 1))))
    return out


def _hms(ra: float, dec: float) -> str:
    c = SkyCoord(ra, dec, unit="deg")
    return (f"{c.ra.to_string(unit='hourangle', sep=':', precision=1, pad=True)} "
            f"{c.dec.to_string(sep=':', precision=0, alwayssign=True, pad=True)} ({ra:.4f}°, {dec:+.4f}°)")


def _utc(mjd: float) -> str:
    return Time(mjd, format="mjd", scale="utc").isot[:19].replace("T", " ") + " UTC"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def header_rows(ctx: dict, *, report, objects: Table, observations: Table, n_known: int = 0,
                astrometry: Table | None = None, vetting: Table | None = None, link: dict | None = None, refcat: str | None = None) -> list[HeaderRow]:
    """The header block's lines.

    Parameters
    ----------
    ctx : dict
        ``provenance.json``'s ``report_context`` (keys missing in runs of earlier versions are shown as such).
    report : ReportConfig
        The report settings (station, observatory name, catalogues, aperture); a setting wins over a header.
    objects, observations : Table
        The run's ``objects.ecsv`` and ``observations.ecsv``.
    n_known : int
        Objects identified with known objects.
    astrometry : Table, optional
        ``astrometry.ecsv`` (fit status and zero point per CCD exposure).
    vetting : Table, optional
        ``vetting.ecsv`` (objects scored by the CNN; ``kept`` False: vetted out).
    link : dict, optional
        ``provenance.json``'s ``link`` statistics (objects rejected by the pixel occupancy test).
    refcat : str, optional
        The reference catalogue file of the run.
    """
    rows: list[HeaderRow] = []

    def add(label, value, source="", missing=False):
        rows.append(HeaderRow(label, str(value), source, missing))

    # observation id
    if "obs_id" not in ctx:
        add("Observation id", NOT_RECORDED, missing=True)
    elif ctx["obs_id"]:
        add("Observation id", ctx["obs_id"], ctx.get("obs_id_source", ""))
    else:
        add("Observation id", NOT_IN_HEADERS, "[io] obs_id_keys, or --obs-id", missing=True)
    # time
    exposures = ctx.get("exposures")
    mid_mjd = None
    if exposures:
        mids = np.array([float(e["mjd"]) for e in exposures])
        times = np.array([float(e.get("exptime") or 0.0) for e in exposures])
        start, end = float(np.min(mids - times / 172800.0)), float(np.max(mids + times / 172800.0))
        mid_mjd = 0.5 * (start + end)
        add("UTC start", _utc(start), "first exposure's start (mid-exposure time minus half the exposure)")
        add("UTC end", _utc(end))
        add("Time span", f"{_span((end - start) * 86400.0)}, {len(exposures)} exposures", "")
        sources = sorted({str(e.get("time_source", "")) for e in exposures if e.get("time_source")})
        if sources:
            add("Time keywords", ", ".join(sources))
        known = sorted({round(float(t), 3) for t in times if t > 0})
        if known and len(known) == len(set(np.round(times, 3))):
            add("Exposure time", ", ".join(f"{t:g} s" for t in known))
        elif known:
            add("Exposure time", ", ".join(f"{t:g} s" for t in known) + f"; {int(np.sum(times <= 0))} exposure(s) "
                f"{NOT_IN_HEADERS} (taken as 0 s)", missing=True)
        else:
            add("Exposure time", f"{NOT_IN_HEADERS} (taken as 0 s: times are the header's, rates uncorrected)",
                missing=True)
    elif len(observations):
        mjd = np.asarray(observations["mjd"], float)
        mid_mjd = float(np.median(mjd))
        add("UTC first observation", _utc(float(mjd.min())), "observations' mid-exposure times (" + NOT_RECORDED + ")")
        add("UTC last observation", _utc(float(mjd.max())))
    else:
        add("UTC start", NOT_RECORDED, missing=True)
    # where
    centre = ctx.get("field_centre")
    if centre:
        ra0, dec0, radius = (float(v) for v in centre[:3])
        add("Field centre", _hms(ra0, dec0),
            f"first exposure, {ctx.get('field_centre_source', 'WCS')}; radius {radius * 60:.1f}′")
        sky = sky_context(ra0, dec0, mid_mjd)
        add("Galactic latitude", f"{sky['galactic_b']:+.1f}°")
        add("Ecliptic latitude", f"{sky['ecliptic_beta']:+.1f}°")
        if "elongation" in sky:
            add("Solar elongation", f"{sky['elongation']:.1f}°", "from the geocentre at mid-span")
    elif "field_centre" in ctx:
        add("Field centre", "no WCS (frames registered to each other only)", missing=True)
    else:
        add("Field centre", NOT_RECORDED, missing=True)
    # filter and band
    if "filter" in ctx:
        flt = str(ctx.get("filter") or "").strip()
        add("Filter", flt or NOT_IN_HEADERS, missing=not flt)
        band = report.band or ctx.get("band", "")
        add("Band (reported)", band or "none: magnitudes are not reported", "[report] band" if report.band else "",
            missing=not band)
    # station and observatory
    station = report.station if report.station != "XXX" else (ctx.get("station") or "XXX")
    if report.station != "XXX":
        add("Station (MPC code)", station, "[report] station")
    elif station != "XXX":
        add("Station (MPC code)", station, "header")
    else:
        add("Station (MPC code)", f"XXX: {NOT_IN_HEADERS}, not set", "set [report] station or --station",
            missing=True)
    if report.observatory_name:
        add("Observatory", report.observatory_name, "[report] observatory_name")
    elif ctx.get("observatory"):
        add("Observatory", ctx["observatory"], f"header ({ctx.get('observatory_key', 'OBSERVAT')})")
    else:
        add("Observatory", NOT_IN_HEADERS if "observatory" in ctx else NOT_RECORDED, "[report] observatory_name",
            missing=True)
    telescope = report.telescope_name or ctx.get("telescope", "")
    add("Telescope", telescope or NOT_IN_HEADERS, "[report] telescope_name" if report.telescope_name else "",
        missing=not telescope)
    if report.telescope_aperture > 0:
        add("Aperture", f"{report.telescope_aperture:g} m", "[report] telescope_aperture")
    elif ctx.get("aperture"):
        value, source = ctx["aperture"][0], ctx["aperture"][1] if len(ctx["aperture"]) > 1 else "header"
        add("Aperture", f"{float(value):g} m", f"header ({source})" if source in ("APTDIA", "APTAREA")
            else f"{source}: a known telescope's aperture")
    else:
        add("Aperture", NOT_IN_HEADERS, "[report] telescope_aperture", missing=True)
    scale = ctx.get("pixel_scale")
    if scale:
        add("Pixel scale", f"{float(scale):.3f}″/px", "WCS" if ctx.get("field_centre") else "")
    seeing = [float(v) for v in (ctx.get("seeing") or {}).values() if v is not None]
    if seeing:
        add("PSF FWHM", f"{np.median(seeing):.2f}″ (median; {min(seeing):.2f}–{max(seeing):.2f}″)", "measured")
    # calibration
    n_fit = int(np.sum(np.asarray(astrometry["status"]).astype(str) == "ok")) if astrometry is not None and len(astrometry) else 0
    n_solutions = len(astrometry) if astrometry is not None else 0
    wcs_kinds = sorted(set(np.asarray(observations["wcs"]).astype(str))) if len(observations) and "wcs" in observations.colnames else []
    if n_fit:
        name = f"{report.astcat}" + (f" ({refcat})" if refcat else "")
        add("Astrometric catalogue", name, f"WCS fitted on {n_fit} of {n_solutions} CCD exposures"
            + ("" if report.astcat != "Gaia3" else "; [report] astcat default"))
    elif "header" in wcs_kinds or "user" in wcs_kinds or (not wcs_kinds and ctx.get("field_centre")):
        cat = report.header_astcat
        add("Astrometric catalogue", "unknown (UNK): the headers' WCS" if cat == "UNK" else f"{cat} (the headers' WCS)",
            "[report] header_astcat", missing=cat == "UNK")
    elif "relative" in wcs_kinds:
        add("Astrometric catalogue", "none: frames registered to each other (relative positions)", missing=True)
    else:
        add("Astrometric catalogue", "none", missing=True)
    sources = ctx.get("zeropoint_sources")
    zps = ctx.get("zeropoints") or {}
    if sources:
        counts = {k: sum(1 for v in sources.values() if v == k) for k in ("fit", "header", "default")}
        parts = []
        for kind, text in (("fit", f"fitted to {report.photcat or 'the reference catalogue'}"),
                           ("header", "from the header keyword"), ("default", "default (nothing calibrated it)")):
            if counts[kind]:
                values = [float(zps[k]) for k, v in sources.items() if v == kind and zps.get(k) is not None]
                median = f", median {np.median(values):.3f}" if values else ""
                parts.append(f"{text} on {counts[kind]} CCD exposure(s){median}")
        add("Zero point", "; ".join(parts), "", missing=counts["default"] == len(sources))
        if counts["fit"]:
            add("Photometric catalogue", report.photcat or "(none written)", "[report] photcat")
    else:
        add("Zero point", NOT_RECORDED, missing=True)
    limits = ctx.get("limits")
    if limits:
        text = ", ".join(f"{ccd} {float(v):.2f}" for ccd, v in sorted(limits.items()) if v is not None)
        default_zp = bool(sources) and all(v == "default" for v in sources.values())
        add("5σ limit per CCD [mag]", text or "not measurable",
            "point source, from each image's noise and PSF (median over exposures)"
            + ("; on the DEFAULT zero point" if default_zp else ""), missing=not text)
    elif limits is None:
        add("5σ limit per CCD [mag]", NOT_RECORDED, missing=True)
    # counts
    n = len(objects)
    vetted = int(np.sum(~np.asarray(vetting["kept"], bool))) if vetting is not None and len(vetting) else 0
    occupancy = int((link or {}).get("occupancy", {}).get("n_rejected", 0) or 0)
    add("Objects", f"{n} ({n - n_known} new, {n_known} known)",
        f"vetted out: {vetted} by the CNN, {occupancy} by the pixel occupancy test")
    return rows
