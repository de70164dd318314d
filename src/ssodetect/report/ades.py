"""IAU ADES (Astrometry Data Exchange Standard, version 2022) for optical observations.

Writers for both serialisations, PSV (pipe-separated values) and XML, and one reader for both.
Field rules follow ``general.xsd``/``submit.xsd``:

* identification: ``permID`` (a number) and/or ``provID`` (``2019 AB12``) when the object is
  known, else ``trkSub`` (at most 8 characters of ``[-A-Za-z0-9_]``);
* ``obsTime``: UTC mid-exposure, ISO-8601 with ``Z``, the number of decimals of seconds set by
  the timing precision (``[report] time_decimals``);
* ``ra``/``dec`` in decimal degrees with enough digits for the uncertainty; ``rmsRA`` (which
  includes cos(dec)) and ``rmsDec`` in arcsec;
* space-based observatories: ``sys`` = ICRF_KM, ``ctr`` = 399 and the geocentric position
  ``pos1..3`` [km] of the spacecraft at mid-exposure;
* element order in XML is that of the schema's ``optical`` sequence.

A document is a list of observation blocks; each block is ``(context, rows)``: ``context`` maps
``observatory``, ``submitter``, ``telescope``, ``software`` to dicts of strings, ``observers``,
``measurers``, ``coinvestigators``, ``collaborators`` to lists of names, ``comment`` to a list of
lines and ``fundingSource`` to a string; ``rows`` are dicts of field name to string, in order.
"""
from __future__ import annotations

import functools
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from astropy.table import Table
from astropy.time import Time

from ssodetect.config import ReportConfig

__all__ = [
    "ADES_VERSION",
    "OPTICAL_FIELDS",
    "AdesBlock",
    "ades_block",
    "ades_context",
    "ades_rows",
    "format_obs_time",
    "format_psv",
    "format_xml",
    "observation_arrays",
    "read_ades",
    "validate_xml",
]

ADES_VERSION = "2022"
#: ``optical`` elements in the order ``submit.xsd`` requires (the subset we write).
OPTICAL_FIELDS = [
    "permID", "provID", "trkSub", "mode", "stn", "sys", "ctr", "pos1", "pos2", "pos3", "obsTime", "rmsTime",
    "ra", "dec", "rmsRA", "rmsDec", "rmsCorr", "astCat", "mag", "rmsMag", "band", "photCat", "photAp", "logSNR",
    "seeing", "exp", "rmsFit", "nStars", "notes", "remarks",
]
_NAME_LISTS = ("observers", "measurers", "coinvestigators", "collaborators")
_GROUPS = ("observatory", "submitter", "telescope", "software")
#: obsContext elements in the order the PSV header writes them.
_CONTEXT_ORDER = ("observatory", "submitter", "observers", "measurers", "telescope", "software", "coinvestigators",
                  "collaborators", "fundingSource", "comment")
_TRKSUB = re.compile(r"^[-A-Za-z0-9_]{1,8}$")

AdesBlock = tuple  # (context: dict, rows: list[dict[str, str]])


@functools.lru_cache(maxsize=4096)  # a field's observations share a few exposure times
def format_obs_time(mjd: float, *, decimals: int = 3) -> str:
    """ISO-8601 UTC time with ``decimals`` digits of seconds (0-6) and a trailing ``Z``."""
    t = Time(mjd, format="mjd", scale="utc")
    t.precision = int(decimals)
    text = t.isot
    if decimals == 0:
        text = text.split(".")[0]
    return text + "Z"


def _num(value, decimals: int, *, sign: bool = False) -> str:
    if value is None:
        return ""
    value = float(value)
    if not math.isfinite(value):
        return ""
    return format(value, f"{'+' if sign else ''}.{decimals}f")


def _position(km: float) -> str:
    """A spacecraft's coordinate [km] in ADES' 13 characters (sign aside): 4 decimals (0.1 m) where they fit, fewer
    for a far spacecraft (2e8 km had 4 decimals and broke the schema's pattern)."""
    for decimals in range(4, -1, -1):  # (the digits counted after rounding: 99999999.99996 rounds to 9 digits)
        text = _num(km, decimals)
        if len(text.lstrip("+-")) <= 13:
            break
    return text


def _angle_decimals(rms_arcsec: float) -> int:
    """Decimal places of degrees that resolve a tenth of the uncertainty (6 to 9)."""
    rms = max(float(rms_arcsec), 1e-4) if math.isfinite(rms_arcsec) else 0.1
    return int(min(9, max(6, math.ceil(-math.log10(rms / 3600.0 / 10.0)))))


def _rms(value: float) -> str:
    """An uncertainty [arcsec] in at most 7 characters, never zero."""
    value = max(float(value), 0.0001)
    for decimals in (4, 3, 2, 1, 0):
        text = format(value, f".{decimals}f")
        if len(text) <= 7:
            return text
    return "9999999"


def ades_context(config: ReportConfig, *, station: str | None = None, filter_name: str = "",
                 pixel_scale: float | None = None, array_size: str = "", software: str = "") -> dict:
    """obsContext of a block from the configuration.

    Parameters
    ----------
    config : ReportConfig
    station : str, optional
        MPC code (default ``config.station``).
    filter_name : str
        Filter of the frames (telescope ``filter``).
    pixel_scale : float, optional
        [arcsec/px] (telescope ``pixelScale``).
    array_size : str
        Detector format, e.g. ``"4096x4132"``.
    software : str
        Name and version written as the software's ``objectDetection`` and ``astrometry``.
    """
    ctx: dict = {"observatory": {"mpcCode": station or config.station}}
    if config.observatory_name:
        ctx["observatory"]["name"] = config.observatory_name
    ctx["submitter"] = {"name": config.submitter}
    if config.institution:
        ctx["submitter"]["institution"] = config.institution
    if config.observers:
        ctx["observers"] = list(config.observers)
    ctx["measurers"] = list(config.measurers) or [config.submitter]
    tel = {}
    if config.telescope_name:
        tel["name"] = config.telescope_name
    tel["design"] = config.telescope_design
    tel["aperture"] = _num(config.telescope_aperture, 2).rstrip("0").rstrip(".") or "0"
    tel["detector"] = config.telescope_detector
    if config.telescope_f_ratio > 0:
        tel["fRatio"] = _num(config.telescope_f_ratio, 1)
    if filter_name:
        tel["filter"] = filter_name[:25]
    if array_size:
        tel["arraySize"] = array_size
    if pixel_scale and pixel_scale > 0:
        tel["pixelScale"] = _num(pixel_scale, 3)
    ctx["telescope"] = tel
    if software:
        ctx["software"] = {"astrometry": software, "photometry": software, "objectDetection": software}
    if config.funding_source:
        ctx["fundingSource"] = config.funding_source
    if config.comment:
        # (a chunk of blanks only is no ADES line)
        ctx["comment"] = [line for line in (config.comment[i : i + 100] for i in range(0, len(config.comment), 100))
                          if line.strip()]
    return ctx


def ades_rows(observations: Table, config: ReportConfig, *, station: str | None = None, band: str = "",
              seeing: dict | None = None, identities: dict | None = None, positions: dict | None = None) -> list[dict]:
    """ADES ``optical`` records for an observation table.

    Parameters
    ----------
    observations : Table
        Rows of ``observations.ecsv`` (``object, mjd, ra, dec, ra_err, dec_err, mag, mag_err,
        exptime, snr``; ``ra_err``/``dec_err`` [arcsec] with ``ra_err`` on the sky); optional
        ``ast_cat`` / ``phot_cat`` per row override ``config.astcat`` / ``config.photcat``.
    config : ReportConfig
        Station, astrometric/photometric catalogues, time precision, mode.
    station : str, optional
        MPC code (default ``config.station``).
    band : str
        Photometric band; ``config.band`` wins when set.  No photometry is written without one.
    seeing : dict, optional
        Exposure index -> PSF FWHM [arcsec].
    identities : dict, optional
        Object name -> ``(permID, provID)`` of an identified known object (either may be ``""``).
    positions : dict, optional
        Exposure index -> geocentric ICRF position [km] (x, y, z) of a space-based observatory.

    Returns
    -------
    list of dict
        One record per observation, keys in :data:`OPTICAL_FIELDS` order, string values.

    Raises
    ------
    ValueError
        An object name that is not a valid trkSub.
    """
    band = config.band or band
    identities = identities or {}
    rows = []
    for row in observations:
        trk = str(row["object"])
        if not _TRKSUB.match(trk):
            raise ValueError(f"object id {trk!r} is not a valid ADES trkSub")
        rec: dict = {}
        perm, prov = identities.get(trk, ("", ""))
        if perm:
            rec["permID"] = perm
        if prov:
            rec["provID"] = prov
        rec["trkSub"] = trk
        rec["mode"] = config.mode
        rec["stn"] = station or config.station
        exposure = int(row["exposure"]) if "exposure" in row.colnames else -1
        if positions and exposure in positions and positions[exposure] is not None:
            rec["sys"], rec["ctr"] = "ICRF_KM", "399"
            for k, v in zip(("pos1", "pos2", "pos3"), positions[exposure]):
                rec[k] = _position(v)
        rec["obsTime"] = format_obs_time(float(row["mjd"]), decimals=config.time_decimals)
        if config.time_rms > 0:
            rec["rmsTime"] = _num(config.time_rms, 3)
        ra_err, dec_err = float(row["ra_err"]), float(row["dec_err"])
        decimals = _angle_decimals(min(ra_err, dec_err))
        rec["ra"] = _num(float(row["ra"]) % 360.0, decimals)
        rec["dec"] = _num(float(row["dec"]), decimals, sign=True)
        rec["rmsRA"] = _rms(ra_err)
        rec["rmsDec"] = _rms(dec_err)
        rec["astCat"] = str(row["ast_cat"]) if "ast_cat" in row.colnames else config.astcat
        photcat = str(row["phot_cat"]) if "phot_cat" in row.colnames else config.photcat
        mag = float(row["mag"])
        if math.isfinite(mag) and band and -5.0 <= mag <= 35.0:
            rec["mag"] = _num(mag, 2)
            mag_err = float(row["mag_err"])
            if math.isfinite(mag_err) and mag_err > 0:
                rec["rmsMag"] = _num(min(max(mag_err, 0.001), 9.999), 3)  # the schema wants > 0
            rec["band"] = band[:3]
            if photcat:
                rec["photCat"] = photcat
        snr = float(row["snr"])
        if snr > 0 and math.isfinite(snr):
            rec["logSNR"] = _num(min(math.log10(snr), 9.99), 2)
        if seeing and exposure in seeing and math.isfinite(seeing[exposure]) and seeing[exposure] > 0:
            rec["seeing"] = _num(seeing[exposure], 2)
        exptime = float(row["exptime"])
        if math.isfinite(exptime) and exptime > 0:
            rec["exp"] = _num(exptime, 1)
        rows.append({k: rec[k] for k in OPTICAL_FIELDS if k in rec})
    return rows


def ades_block(observations: Table, config: ReportConfig, **kwargs) -> AdesBlock:
    """``(context, rows)`` for one observatory: :func:`ades_context` and :func:`ades_rows` keyword
    arguments are passed to each (``station`` to both)."""
    ctx_keys = {"filter_name", "pixel_scale", "array_size", "software"}
    ctx = ades_context(config, station=kwargs.get("station"), **{k: v for k, v in kwargs.items() if k in ctx_keys})
    rows = ades_rows(observations, config, **{k: v for k, v in kwargs.items() if k not in ctx_keys})
    return ctx, rows


# --- PSV -------------------------------------------------------------------------------------------

def format_psv(blocks: list[AdesBlock]) -> str:
    """PSV text: ``# version=2022``, then per block its header and a table whose columns are the
    fields present in its rows (schema order), padded for reading."""
    lines = [f"# version={ADES_VERSION}"]
    for ctx, rows in blocks:
        for key in _CONTEXT_ORDER:
            if key not in ctx:
                continue
            value = ctx[key]
            lines.append(f"# {key}")
            if key in _GROUPS:
                lines += [f"! {k} {v}" for k, v in value.items()]
            elif key in _NAME_LISTS:
                lines += [f"! name {v}" for v in value]
            elif key == "comment":
                lines += [f"! line {v}" for v in value]
            else:
                lines[-1] = f"# {key} {value}"
        fields = [f for f in OPTICAL_FIELDS if any(f in r for r in rows)] or ["trkSub", "mode", "stn", "obsTime",
                                                                               "ra", "dec", "astCat"]
        widths = [max([len(f)] + [len(r.get(f, "")) for r in rows]) for f in fields]
        lines.append("|".join(f.ljust(w) for f, w in zip(fields, widths)))
        for r in rows:
            lines.append("|".join(r.get(f, "").ljust(w) for f, w in zip(fields, widths)))
    return "\n".join(lines) + "\n"


def _read_psv(text: str) -> list[AdesBlock]:
    blocks: list[AdesBlock] = []
    ctx: dict = {}
    rows: list = []
    fields: list | None = None
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if fields is not None:  # a new header after data: a new block
                blocks.append((ctx, rows))
                ctx, rows, fields = {}, [], None
            body = line[1:].strip()
            if body.startswith("version"):
                continue
            key, _, rest = body.partition(" ")
            current = key
            if key in _GROUPS:
                ctx[key] = {}
            elif key in _NAME_LISTS or key == "comment":
                ctx[key] = []
            else:
                ctx[key] = rest.strip()
        elif line.startswith("!"):
            key, _, value = line[1:].strip().partition(" ")
            value = value.strip()
            if current in _GROUPS:
                ctx[current][key] = value
            elif current in _NAME_LISTS or current == "comment":
                ctx[current].append(value)
        elif fields is None:
            fields = [f.strip() for f in line.split("|")]
        else:
            values = [v.strip() for v in line.split("|")]
            if len(values) != len(fields):
                raise ValueError(f"PSV line has {len(values)} fields, the header {len(fields)}: {raw!r}")
            rows.append({f: v for f, v in zip(fields, values) if v != ""})
    if fields is not None or ctx:
        blocks.append((ctx, rows))
    return blocks


# --- XML -------------------------------------------------------------------------------------------

def format_xml(blocks: list[AdesBlock]) -> str:
    """XML text (UTF-8 declaration, ``<ades version="2022">``, one ``obsBlock`` per block)."""
    root = ET.Element("ades", version=ADES_VERSION)
    for ctx, rows in blocks:
        block = ET.SubElement(root, "obsBlock")
        context = ET.SubElement(block, "obsContext")
        for key in _CONTEXT_ORDER:
            if key not in ctx:
                continue
            value = ctx[key]
            el = ET.SubElement(context, key)
            if key in _GROUPS:
                for k, v in value.items():
                    ET.SubElement(el, k).text = v
            elif key in _NAME_LISTS:
                for v in value:
                    ET.SubElement(el, "name").text = v
            elif key == "comment":
                for v in value:
                    ET.SubElement(el, "line").text = v
            else:
                el.text = value
        data = ET.SubElement(block, "obsData")
        for r in rows:
            opt = ET.SubElement(data, "optical")
            for k in OPTICAL_FIELDS:
                if k in r:
                    ET.SubElement(opt, k).text = r[k]
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _record(rec) -> dict:
    """An XML observation record as a dict; non-optical records carry their type in ``_type``."""
    row = {c.tag: (c.text or "").strip() for c in rec}
    if rec.tag != "optical":
        row["_type"] = rec.tag
    return row


def _read_xml(text: str) -> list[AdesBlock]:
    root = ET.fromstring(text.encode("utf-8") if isinstance(text, str) else text)
    blocks = []
    for block in root.iter("obsBlock"):
        ctx: dict = {}
        context = block.find("obsContext")
        for el in list(context) if context is not None else []:
            if el.tag in _GROUPS:
                ctx[el.tag] = {c.tag: (c.text or "").strip() for c in el}
            elif el.tag in _NAME_LISTS or el.tag == "comment":
                ctx[el.tag] = [(c.text or "").strip() for c in el]
            else:
                ctx[el.tag] = (el.text or "").strip()
        data = block.find("obsData")
        blocks.append((ctx, [_record(rec) for rec in (list(data) if data is not None else [])]))
    # the "general" form: records straight under <ades>, without obsBlock/obsContext
    loose = [rec for rec in root if rec.tag in ("optical", "offset", "occultation", "radar")]
    if loose:
        blocks.append(({}, [_record(rec) for rec in loose]))
    return blocks


def read_ades(source: str | Path) -> list[AdesBlock]:
    """Read an ADES document, PSV or XML (told apart by the first character).

    Parameters
    ----------
    source : str or Path
        A file path, or the document's text.

    Returns
    -------
    list of (context, rows)
        As documented in the module docstring; every value a string.

    Raises
    ------
    ValueError
        Malformed PSV (a data line with the wrong number of fields) or XML.
    """
    text = source
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and Path(source).exists()):
        text = Path(source).read_text(encoding="utf-8")
    if text.lstrip().startswith("<"):
        try:
            return _read_xml(text)
        except ET.ParseError as exc:
            raise ValueError(f"not well-formed ADES XML: {exc}") from exc
    return _read_psv(text)


def validate_xml(text: str, xsd_path: str | Path) -> list[str]:
    """Validate ADES XML against an XSD (``submit.xsd`` or ``general.xsd``) with lxml.

    Returns
    -------
    list of str
        The schema's error messages; empty when the document is valid.
    """
    from lxml import etree

    schema = etree.XMLSchema(etree.parse(str(xsd_path)))
    doc = etree.fromstring(text.encode("utf-8"))
    if schema.validate(doc):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log]


def observation_arrays(blocks: list[AdesBlock]) -> Table:
    """The optical records of a document as a table (``obsTime`` parsed to ``mjd``; ``ra``, ``dec``,
    ``rmsRA``, ``rmsDec``, ``mag`` as floats, NaN where absent; identification and ``stn`` as text)."""
    rows = [r for _, rr in blocks for r in rr if r.get("_type", "optical") == "optical" and "obsTime" in r]
    ident = [r.get("permID") or r.get("provID") or r.get("trkSub", "") for r in rows]
    times = Time([r["obsTime"].rstrip("Z") for r in rows], format="isot", scale="utc") if rows else None

    def col(name):
        return np.array([float(r[name]) if r.get(name, "") != "" else np.nan for r in rows], float)

    return Table({
        "object": np.array(ident, dtype=str), "stn": np.array([r.get("stn", "") for r in rows], dtype=str),
        "mjd": times.mjd if times is not None else np.zeros(0), "ra": col("ra"), "dec": col("dec"),
        "rmsRA": col("rmsRA"), "rmsDec": col("rmsDec"), "mag": col("mag"),
    })
