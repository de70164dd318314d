"""Orbital elements of known objects: MPCORB.DAT and the JPL SBDB element forms.

Every reader returns one :class:`astropy.table.Table` with a row per object and the columns of
:data:`ORBIT_COLUMNS`: heliocentric osculating elements referred to the J2000 ecliptic and equinox
(the MPC's and JPL's convention), angles in degrees, the epoch as MJD in TT (= TDB to 2 ms).  For
elliptic orbits the mean anomaly at epoch is given; for every orbit the perihelion distance ``q``
and time ``tp`` (which hyperbolic and parabolic comets need).

Formats read:

* ``MPCORB.DAT`` (and the MPC's extracts of it, e.g. NEA.txt): fixed columns, packed designation
  and epoch; header lines before the line of dashes are skipped.
* JPL SBDB API answers for one object (``{"object": ..., "orbit": {"elements": [...]}, "phys_par": ...}``)
  or a list of them.
* JPL SBDB Query API tables (``{"fields": [...], "data": [[...], ...]}``, e.g. Debian's
  ``kstars-data`` asteroids.dat) with fields such as ``full_name, epoch_mjd, e, a, q, i, om, w, ma, tp, H, G``.
"""
from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import math
import re
import zlib
from pathlib import Path

import numpy as np
from astropy.table import Table

from ssodetect import safejson
from ssodetect.columns import describe
from ssodetect.errors import InputError
from ssodetect.io.frames import check_regular_file
from ssodetect.known.designations import unpack_number, unpack_provisional

__all__ = ["ORBIT_COLUMNS", "GAUSS_K", "read_orbits", "read_mpcorb", "read_sbdb", "unpack_epoch", "orbits_table",
           "write_sbdb"]

log = logging.getLogger(__name__)

#: Gaussian gravitational constant [au^1.5 / day] (GM_sun = k^2 in au^3/d^2).
GAUSS_K = 0.01720209895
ORBIT_COLUMNS = [
    ("designation", "U48", "", "readable name, e.g. '(1) Ceres' or '2019 AB12'"),
    ("number", "i8", "", "permanent number (-1 when unnumbered)"),
    ("provisional", "U16", "", "provisional designation (empty when unknown)"),
    ("epoch", "f8", "d", "epoch of osculation, MJD TT"),
    ("q", "f8", "AU", "perihelion distance"),
    ("e", "f8", "", "eccentricity"),
    ("i", "f8", "deg", "inclination to the J2000 ecliptic"),
    ("node", "f8", "deg", "longitude of the ascending node"),
    ("peri", "f8", "deg", "argument of perihelion"),
    ("M", "f8", "deg", "mean anomaly at epoch (NaN for e >= 1)"),
    ("tp", "f8", "d", "time of perihelion, MJD TT"),
    ("H", "f8", "mag", "absolute magnitude (NaN when unknown)"),
    ("G", "f8", "", "slope parameter (0.15 when unknown)"),
]
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def unpack_epoch(packed: str) -> float:
    """MJD of a packed MPC epoch (``K205V`` -> 2020-05-31.0; century letter, year, month, day)."""
    from astropy.time import Time

    p = packed.strip()
    if len(p) != 5:
        raise ValueError(f"{packed!r} is not a packed epoch")
    year = _B62.index(p[0]) * 100 + int(p[1:3])
    month, day = _B62.index(p[3]), _B62.index(p[4])
    return float(Time(f"{year:04d}-{month:02d}-{day:02d}", scale="tt").mjd)


def orbits_table(rows: list[dict]) -> Table:
    """A table of :data:`ORBIT_COLUMNS` from dicts (missing values NaN / empty)."""
    cols = {}
    for name, dtype, unit, desc in ORBIT_COLUMNS:
        default = "" if dtype.startswith("U") else (-1 if dtype == "i8" else np.nan)
        values = [r.get(name, default) for r in rows]
        cols[name] = np.array(values, dtype=dtype if not dtype.startswith("U") else str) if rows else np.zeros(
            0, dtype=dtype)
    table = describe(Table(cols), ORBIT_COLUMNS)
    _complete(table)
    return table


def _complete(table: Table) -> None:
    """Fill ``tp`` from ``M`` (elliptic) and ``M`` from ``tp``; G defaults to 0.15."""
    q, e = np.asarray(table["q"], float), np.asarray(table["e"], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = q / (1.0 - e)
        n = np.degrees(GAUSS_K / np.abs(a) ** 1.5)  # deg/day
    M, tp, epoch = (np.asarray(table[c], float) for c in ("M", "tp", "epoch"))
    ell = e < 1
    fill_tp = ell & np.isfinite(M) & ~np.isfinite(tp)
    tp = np.where(fill_tp, epoch - (((M + 180.0) % 360.0) - 180.0) / n, tp)
    fill_m = ell & ~np.isfinite(M) & np.isfinite(tp)
    M = np.where(fill_m, (epoch - tp) * n % 360.0, M)
    table["tp"], table["M"] = tp, np.where(ell, M, np.nan)
    table["G"] = np.where(np.isfinite(np.asarray(table["G"], float)), table["G"], 0.15)


def _split_name(name: str) -> tuple[str, int, str]:
    """'(1) Ceres' / '1 Ceres (A801 AA)' / '2019 AB12' / 'C/2020 Y2 (ATLAS)' -> (designation, number, provisional)."""
    text = " ".join(name.split())
    provisional = re.fullmatch(r"\(?(\d{4} [A-Z]{2}\d*)\)?", text)  # SBDB writes them as "(2011 CW119)"
    if provisional:
        return provisional.group(1), -1, provisional.group(1)
    m = re.match(r"^\((\d+)\)\s*(.*)$", text) or re.match(r"^(\d+)\s+(.*)$", text)
    if m:
        number, rest = int(m.group(1)), m.group(2)
        prov = re.search(r"\((\d{4} [A-Z]{2}\d*)\)", rest)
        label = re.sub(r"\s*\(.*\)$", "", rest).strip()
        return f"({number}) {label}".strip(), number, prov.group(1) if prov else ""
    prov = re.match(r"^(\d{4} [A-Z]{2}\d*)", text)
    return text, -1, prov.group(1) if prov else ""


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def read_mpcorb(lines, skipped: list | None = None) -> Table:
    """Orbits from MPCORB.DAT lines (an iterable of str).

    ``skipped`` (when given) receives the 1-based numbers of the data lines that hold no orbit (damaged, cut short):
    every non-blank line after the header's ``-----`` rule, or every one of a file without that header.
    """
    rows = []
    lines = list(lines)
    header_end = next((k for k, line in enumerate(lines) if line.startswith("-----")), -1)
    for k, line in enumerate(lines):
        if len(line) < 103 or not re.match(r"^[0-9A-Za-z~ ]{5,7} ", line) or not re.match(r"\s*\d", line[26:35]):
            if skipped is not None and k > header_end and line.strip() and not line.startswith("-----"):
                skipped.append(k + 1)
            continue
        packed = line[0:7].strip()
        readable = line[166:194].strip()
        if readable:
            desig, number, prov = _split_name(readable)
        else:
            try:
                number, desig, prov = unpack_number(packed), "", ""
                desig = f"({number})"
            except ValueError:
                number, prov = -1, unpack_provisional(packed)
                desig = prov
        a, e = _float(line[92:103]), _float(line[70:79])
        rows.append({
            "designation": desig, "number": number, "provisional": prov, "epoch": unpack_epoch(line[20:25]),
            "q": a * (1.0 - e), "e": e, "i": _float(line[59:68]), "node": _float(line[48:57]),
            "peri": _float(line[37:46]), "M": _float(line[26:35]), "H": _float(line[8:13]), "G": _float(line[14:19]),
        })
    return orbits_table(rows)


def _sbdb_row(fields: dict) -> dict:
    """One SBDB record (field -> value) as an orbit row; times JD/MJD TDB."""
    name = fields.get("full_name") or fields.get("fullname") or fields.get("des") or ""
    desig, number, prov = _split_name(str(name))
    e = _float(fields.get("e"))
    q = _float(fields.get("q"))
    if not math.isfinite(q):
        q = _float(fields.get("a")) * (1.0 - e)
    epoch = _float(fields.get("epoch_mjd"))
    if not math.isfinite(epoch):
        epoch = _float(fields.get("epoch")) - 2400000.5
    tp = _float(fields.get("tp"))
    if math.isfinite(tp) and tp > 2400000.5:
        tp -= 2400000.5
    return {"designation": desig, "number": number, "provisional": prov, "epoch": epoch, "q": q, "e": e,
            "i": _float(fields.get("i")), "node": _float(fields.get("om")), "peri": _float(fields.get("w")),
            "M": _float(fields.get("ma")), "tp": tp, "H": _float(fields.get("H")), "G": _float(fields.get("G"))}


def read_sbdb(doc) -> Table:
    """Orbits from a parsed JPL SBDB JSON document (single-object API answer, a list of them, or a Query API table)."""
    rows = []
    docs = doc if isinstance(doc, list) else [doc]
    for d in docs:
        if "fields" in d and "data" in d:
            names = list(d["fields"])
            rows += [_sbdb_row(dict(zip(names, rec))) for rec in d["data"]]
        elif "orbit" in d:
            fields = {el["name"]: el["value"] for el in d["orbit"].get("elements", [])}
            fields["epoch"] = d["orbit"].get("epoch")
            for par in d.get("phys_par", []) or []:
                if par.get("name") in ("H", "G"):
                    fields[par["name"]] = par.get("value")
            obj = d.get("object", {})
            fields["full_name"] = obj.get("fullname") or obj.get("des", "")
            rows.append(_sbdb_row(fields))
        else:
            raise ValueError("not a JPL SBDB orbit document (no 'orbit' or 'fields'/'data')")
    return orbits_table(rows)


#: Largest orbit file read [bytes, uncompressed] (MPCORB.DAT is ~300 MB).
MAX_ORBIT_BYTES = 2 * 2**30


def read_orbits(path: str | Path) -> Table:
    """Read an orbit file, MPCORB.DAT or SBDB JSON (either optionally gzip, bzip2 or xz compressed), told apart by
    its content.

    Raises
    ------
    InputError
        The file cannot be read or holds no orbit (one line naming the file).
    """
    path = Path(path)
    check_regular_file(path, "orbit")  # (a pipe would block for ever, /dev/zero read without end)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
        opener = (gzip.open if magic[:2] == b"\x1f\x8b" else bz2.open if magic[:3] == b"BZh"
                  else lzma.open if magic == b"\xfd7zXZ\x00" else open)
        with opener(path, "rb") as handle:  # (read at most MAX_ORBIT_BYTES: an archive may expand without end)
            raw = handle.read(MAX_ORBIT_BYTES + 1)
        if len(raw) > MAX_ORBIT_BYTES:
            raise InputError(f"{path}: orbit file larger than {MAX_ORBIT_BYTES / 2**30:g} GiB (uncompressed): not "
                             "read")
        text = raw.decode("utf-8", errors="replace")
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:  # a truncated or damaged archive
        raise InputError(f"{path}: cannot read orbit file ({getattr(exc, 'strerror', None) or exc or 'truncated'})"
                         ) from None
    skipped: list = []
    try:
        table = (read_sbdb(safejson.loads(text)) if text.lstrip().startswith(("{", "["))
                 else read_mpcorb(text.splitlines(), skipped))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # (a null member: AttributeError, campaign 32)
        raise InputError(f"{path}: not an MPCORB or JPL SBDB orbit file ({exc})") from None
    if skipped and len(table):  # (a damaged line, a download cut short: said, not dropped in silence)
        log.warning("%s: %d line(s) that hold no MPCORB orbit (damaged or cut short) left out (first: line %d)", path,
                    len(skipped), skipped[0])
    # a perihelion distance must be positive and an eccentricity at least 0 (a negative semi-major axis on an
    # ellipse had propagated to NaN positions)
    with np.errstate(invalid="ignore"):
        ok = (np.isfinite(table["q"]) & np.isfinite(table["e"]) & np.isfinite(table["i"]) & np.isfinite(table["tp"])
              & np.isfinite(table["node"]) & np.isfinite(table["peri"])  # (a null node passed, then fell silently)
              & (np.asarray(table["q"], float) > 0) & (np.asarray(table["e"], float) >= 0))
    if not ok.any():
        raise InputError(f"{path}: no usable orbit (MPCORB.DAT lines or JPL SBDB elements expected)")
    if not ok.all():  # (said, not dropped in silence)
        bad = np.nonzero(~ok)[0]
        log.warning("%s: %d of %d orbits without usable elements (q > 0, e >= 0, i, node, argument of perihelion, "
                    "time of perihelion) left out "
                    "(first: %s)",
                    path, bad.size, len(table), str(table["designation"][bad[0]]).strip() or f"row {bad[0] + 1}")
    return table[ok]


def write_sbdb(table: Table, path: str | Path) -> None:
    """Write orbits as a JPL SBDB Query API table (the form :func:`read_sbdb` reads)."""
    fields = ["full_name", "epoch_mjd", "e", "q", "i", "om", "w", "ma", "tp", "H", "G"]
    data = []
    for r in table:
        name = f"({r['designation']})" if r["number"] < 0 else f"{int(r['number'])} {str(r['designation']).split(') ', 1)[-1]}"
        if r["provisional"] and r["number"] >= 0:
            name += f" ({r['provisional']})"
        vals = [float(r[c]) for c in ("epoch", "e", "q", "i", "node", "peri", "M", "tp", "H", "G")]
        vals[7] += 2400000.5  # tp as JD TDB, as the API gives it
        data.append([name] + [None if not math.isfinite(v) else repr(v) for v in vals])
    Path(path).write_text(json.dumps({"signature": {"source": "ssodetect"}, "fields": fields, "data": data,
                                      "count": len(data)}))
