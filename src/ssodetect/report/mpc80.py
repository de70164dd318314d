"""MPC 80-column optical observation records (the "MPC1992" format): writer and reader.

Columns (1-based, as the MPC documents them):

====== =====================================================================
1-5    packed permanent number (or periodic comet number and orbit type)
6-12   packed provisional designation, or the observer's temporary one
13     discovery asterisk
14     note 1
15     note 2: ``C`` CCD, ``S`` space-based (first of two lines), ``s`` its
       second line, ``R``/``r`` radar, ``V``/``v`` roving observer, ...
16-32  UTC date ``YYYY MM DD.dddddd``
33-44  RA (J2000) ``HH MM SS.sss``
45-56  Dec (J2000) ``sDD MM SS.ss``
66-70  magnitude, 71 band
72     astrometric catalogue code (set by the MPC; blank on submission)
78-80  observatory code
====== =====================================================================

The second line of a space-based observation carries, from column 33, ``1`` (km) or ``2`` (au)
and the geocentric J2000 equatorial position of the spacecraft: X in 35-45, Y in 47-57, Z in
59-69, each with its sign in the first column of the field.

Header lines (``COD``, ``OBS``, ``MEA``, ``TEL``, ``NET``, ``ACK``, ``AC2``, ``COM``, ...) precede
the records.
"""
from __future__ import annotations

import functools
import logging
import math
import re
import textwrap
import unicodedata
import warnings
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table
from astropy.time import Time
from erfa import ErfaWarning

from ssodetect.known.designations import pack_number, pack_provisional, unpack_number, unpack_provisional

__all__ = [
    "MPCRecord",
    "UnwritableRecord",
    "format_record",
    "format_mpc80",
    "header_lines",
    "pack_number",
    "unpack_number",
    "pack_provisional",
    "unpack_provisional",
    "parse_record",
    "read_mpc80",
    "records_table",
]

log = logging.getLogger(__name__)

_HEADER = re.compile(r"^[A-Z]{2}[A-Z0-9]( |$)")
_DATE = re.compile(r"^\d{4} \d\d \d\d")
AU_KM = 149597870.7


class UnwritableRecord(ValueError):
    """A value of a record that the 80-column format has no room for (a spacecraft position out of its range)."""


@dataclass
class MPCRecord:
    """One optical observation (a space-based one spans two lines).

    ``number``/``provisional`` hold the packed fields of columns 1-5 and 6-12 as written;
    ``mjd`` is UTC; ``ra``/``dec`` [deg]; ``observer`` the geocentric position [km] of a
    space-based observatory.  ``*_decimals`` remember the precision of each field so that
    a record read from a file is written back unchanged.
    """

    number: str = ""
    provisional: str = ""
    discovery: str = ""
    note1: str = ""
    note2: str = "C"
    mjd: float = float("nan")
    ra: float = float("nan")
    dec: float = float("nan")
    mag: float = float("nan")
    band: str = ""
    catalogue: str = ""
    reference: str = ""
    code: str = "XXX"
    observer: tuple | None = None
    observer_unit: str = "1"
    date_decimals: int = 6
    ra_decimals: int = 3
    dec_decimals: int = 2
    mag_decimals: int = 2
    extra: dict = field(default_factory=dict)
    #: Where the observation was measured (its FITS file), for the messages about it; not written.
    source: str = ""

    @property
    def designation(self) -> str:
        """Unpacked number, else unpacked provisional designation, else the temporary one."""
        if self.number.strip().isdigit() or re.fullmatch(r"[A-Za-z~]\w{3,4}", self.number.strip() or "-"):
            try:
                return str(unpack_number(self.number))
            except ValueError:
                pass
        try:
            return unpack_provisional(self.provisional)
        except ValueError:
            return (self.number + self.provisional).strip()


@functools.lru_cache(maxsize=4096)
def _date_text(mjd: float, decimals: int) -> str:
    # cached: a field's thousands of observations share a few exposure times (two Time objects each)
    with warnings.catch_warnings():  # UTC before 1960 is "dubious" to ERFA; old observations are real
        warnings.simplefilter("ignore", ErfaWarning)
        t = Time(mjd, format="mjd", scale="utc")
        day0 = Time(t.strftime("%Y-%m-%d"), scale="utc")
        frac = float((t - day0).to_value("day"))
        ymd, d = t.strftime("%Y %m"), int(t.strftime("%d"))
    value = round(d + frac, decimals)
    if value >= d + 1:  # rounding reached midnight: let astropy carry into the next day
        return _date_text(mjd + 0.5 * 10.0**-decimals, decimals)
    return f"{ymd} {value:0{3 + decimals}.{decimals}f}"


def _sexagesimal(value: float, decimals: int, *, sign: bool, hours: bool, parts: int = 3) -> str:
    """``[s]DD MM SS.s...`` (``parts`` = 3) or ``[s]DD MM.m...`` (2) or ``[s]DD.d...`` (1)."""
    v = value / 15.0 if hours else value
    neg = math.copysign(1.0, v) < 0
    scale = 10**decimals
    unit = 60 ** (parts - 1)
    total = round(abs(v) * unit * scale)
    if hours:
        total %= 24 * unit * scale
    whole, frac = divmod(total, scale)
    fields = []
    for _ in range(parts - 1):
        whole, rem = divmod(whole, 60)
        fields.insert(0, rem)
    fields.insert(0, whole)
    text = " ".join(f"{f:02d}" for f in fields) + (f".{frac:0{decimals}d}" if decimals > 0 else "")
    if sign:
        text = ("-" if neg else "+") + text
    return text


def format_record(rec: MPCRecord) -> list[str]:
    """The 80-character line(s) of a record (two for a space-based observation, ``note2 = 'S'``)."""
    num = rec.extra.get("cols1_5") or (rec.number.rjust(5) if rec.number else " " * 5)
    prov = rec.extra.get("cols6_12") or rec.provisional.ljust(7)
    date = _date_text(rec.mjd, rec.date_decimals)
    ra = _sexagesimal(rec.ra % 360.0, rec.ra_decimals, sign=False, hours=True, parts=rec.extra.get("ra_parts", 3))
    dec = _sexagesimal(rec.dec, rec.dec_decimals, sign=True, hours=False, parts=rec.extra.get("dec_parts", 3))
    mag = ""
    if math.isfinite(rec.mag):
        mag = f"{rec.mag:.{rec.mag_decimals}f}" if rec.mag_decimals > 0 else f"{rec.mag:.0f}"
        raw = rec.extra.get("mag_text")
        if raw is not None and raw.strip() == mag:  # keep the alignment a record was read with
            mag = raw
    line = (
        f"{num}{prov}{(rec.discovery or ' ')[:1]}{(rec.note1 or ' ')[:1]}{(rec.note2 or ' ')[:1]}"
        f"{date:<17.17}{ra:<12.12}{dec:<12.12}{'':9}{mag:<5.5}{(rec.band or ' ')[:1]}{(rec.catalogue or ' ')[:1]}"
        f"{rec.reference:<5.5}{rec.code:>3.3}"
    )
    lines = [line]
    if rec.note2 == "S":
        if rec.observer is None:
            raise ValueError(f"{rec.designation}: a space-based record needs the observer's position")
        unwritable = UnwritableRecord(f"spacecraft position ({', '.join(f'{v:g}' for v in rec.observer)}) km does "
                                      "not fit the 80-column format's fields (columns 35-69)")
        if not all(math.isfinite(v) for v in rec.observer):
            raise unwritable
        # km unless any component exceeds ten million km; the decimal point moves right with the digits
        unit = "2" if rec.observer_unit == "2" or max(abs(v) for v in rec.observer) >= 1e7 else "1"
        values = [v / AU_KM for v in rec.observer] if unit == "2" else list(rec.observer)
        parts = []
        for v in values:
            digits = len(str(int(abs(v))))
            decimals = min(4 if unit == "1" else 8, 9 - digits)  # point in column 41 (km) / 37 (au) or right of it
            parts.append(("-" if v < 0 else "+") + f"{abs(v):.{max(0, decimals)}f}".rjust(10))
        if any(len(part) != 11 for part in parts):  # more digits than the field holds, even in au
            raise unwritable
        second = (f"{num}{prov} {(rec.note1 or ' ')[:1]}s{date:<17.17}{unit} {parts[0]} {parts[1]} {parts[2]}"
                  f"{'':3}{rec.reference:<5.5}{rec.code:>3.3}")
        lines.append(second)
    for text in lines:
        if len(text) != 80:
            raise ValueError(f"internal: 80-column record has {len(text)} characters: {text!r}")
    return lines


def format_mpc80(records: list[MPCRecord], header: dict | None = None) -> str:
    """A complete message: header lines (``{"COD": "XXX", "OBS": [...], ...}``, each value a string or
    a list of strings) then the records.

    A record with a value the format has no room for (:class:`UnwritableRecord`) is left out, with a warning per
    source (its file) naming the value and counting the records left out; the other records are written.
    """
    lines = []
    for key, value in (header or {}).items():
        for v in [value] if isinstance(value, str) else value:
            lines += header_lines(key, v)
    left_out: dict[tuple[str, str], int] = {}
    for rec in records:
        try:
            lines += format_record(rec)
        except UnwritableRecord as exc:  # one bad header value must not cost the whole report
            key = (rec.source or rec.designation, str(exc))
            left_out[key] = left_out.get(key, 0) + 1
    for (source, problem), n in left_out.items():
        log.warning("%s: %s: %d observation(s) left out of the MPC 80-column report (ADES has no such limit)",
                    source, problem, n)
    return "\n".join(lines) + "\n"


def header_lines(key: str, value: str) -> list[str]:
    """The 80-column header lines of one ``key value`` pair: ASCII only (accents dropped, any other character
    written ``?``, with a warning naming the key and both spellings) and wrapped at word boundaries onto further
    lines of the same key where longer than 80 columns (the MPC continues ``OBS``, ``MEA``, ``COM``, ... that way;
    a word longer than a line is split).  Nothing is cut off."""
    text = " ".join(str(value).split())
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    folded = folded.encode("ascii", "replace").decode("ascii")
    if folded != text:
        log.warning("MPC 80-column header %s: %r written %r (the format is ASCII only; ADES keeps it as given)",
                    key, text, folded)
    width = 80 - len(key) - 1
    return [f"{key} {part}" for part in textwrap.wrap(folded, width, break_on_hyphens=False)] or [key]


def _decimals(text: str) -> int:
    text = text.strip()
    return len(text.split(".")[1]) if "." in text else 0


def _parse_angle(text: str, *, hours: bool) -> tuple[float, int, int]:
    """Value [deg], decimals of the last field and number of fields of a sexagesimal column."""
    text = text.strip()
    if not text:
        return float("nan"), 0, 3
    sign = -1.0 if text.startswith("-") else 1.0
    parts = text.lstrip("+-").split()
    value = 0.0
    for k, part in enumerate(parts):
        value += float(part) / 60.0**k
    value *= 15.0 if hours else 1.0
    return sign * value, _decimals(parts[-1]), len(parts)


def parse_record(line: str) -> MPCRecord:
    """One optical observation line (a first line for space-based ones).

    Raises
    ------
    ValueError
        The date, RA or Dec columns cannot be read.
    """
    line = line.rstrip("\n").ljust(80)
    date_text = line[15:32]
    try:
        y, mo, d = date_text.split()
        day = float(d)
        with warnings.catch_warnings():  # UTC before 1960 is "dubious" to ERFA; old observations are real
            warnings.simplefilter("ignore", ErfaWarning)
            mjd = Time(f"{int(y):04d}-{int(mo):02d}-01", scale="utc").mjd + day - 1.0
    except (ValueError, TypeError) as exc:
        raise ValueError(f"unreadable date in columns 16-32: {date_text!r}") from exc
    ra, ra_dec, ra_parts = _parse_angle(line[32:44], hours=True)
    dec, dec_dec, dec_parts = _parse_angle(line[44:56], hours=False)
    extra = {k: v for k, v in (("ra_parts", ra_parts), ("dec_parts", dec_parts)) if v != 3}
    extra.update(cols1_5=line[0:5], cols6_12=line[5:12], mag_text=line[65:70])
    mag_text = line[65:70].strip()
    try:
        mag = float(mag_text) if mag_text else float("nan")
    except ValueError:
        mag = float("nan")
    return MPCRecord(
        number=line[0:5].strip(), provisional=line[5:12].strip(), discovery=line[12].strip(), note1=line[13].strip(),
        note2=line[14].strip(), mjd=mjd, ra=ra, dec=dec, mag=mag, band=line[70].strip(), catalogue=line[71].strip(),
        reference=line[72:77].strip(), code=line[77:80].strip(), date_decimals=_decimals(d), ra_decimals=ra_dec,
        dec_decimals=dec_dec, mag_decimals=_decimals(mag_text), extra=extra,
    )


def _parse_position(line: str) -> tuple[tuple, str]:
    unit = line[32]
    values = []
    for a, b in ((34, 45), (46, 57), (58, 69)):
        text = line[a:b].replace(" ", "")
        values.append(float(text))
    if unit == "2":
        values = [v * AU_KM for v in values]
    return tuple(values), unit


def read_mpc80(text: str, *, strict: bool = True) -> tuple[dict, list[MPCRecord], list[str]]:
    """Read an 80-column message.

    Parameters
    ----------
    text : str
        The message.
    strict : bool
        Raise on an observation line that cannot be read; when False such lines are returned
        with the other record types.

    Returns
    -------
    header : dict
        Header keyword -> list of values, in order of appearance.
    records : list of MPCRecord
        Optical observations (ground-based, and space-based with their second line merged).
    other : list of str
        Lines of other record types (radar ``R/r``, roving ``V/v``, ...), kept as read.

    Raises
    ------
    ValueError
        A malformed observation line (with its line number), or a space-based first line without
        its second line.
    """
    header: dict = {}
    records: list[MPCRecord] = []
    other: list[str] = []
    pending: MPCRecord | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        line = raw.rstrip("\n")
        if _HEADER.match(line) and not _DATE.match(line.ljust(80)[15:32]):
            key, _, value = line.partition(" ")
            header.setdefault(key, []).append(value.strip())
            continue
        note2 = line.ljust(80)[14]
        try:
            if note2 == "s":
                if pending is None:
                    raise ValueError("second line of a space-based observation without its first line")
                pending.observer, pending.observer_unit = _parse_position(line.ljust(80))
                records.append(pending)
                pending = None
            elif note2 in "RrVvXx" and note2 != " ":
                other.append(line)
            else:
                rec = parse_record(line)
                if note2 == "S":
                    pending = rec
                else:
                    records.append(rec)
        except ValueError as exc:
            if strict:
                raise ValueError(f"line {number}: {exc}") from None
            other.append(line)
    if pending is not None:
        raise ValueError(f"space-based observation of {pending.designation} has no second line")
    return header, records, other


def records_table(records: list[MPCRecord]) -> Table:
    """Records as a table: ``object, mjd, ra, dec, mag, band, code`` and the observer position [km]."""
    obs = np.array([r.observer if r.observer is not None else (np.nan,) * 3 for r in records], float).reshape(-1, 3)
    return Table({
        "object": np.array([r.designation for r in records], dtype=str),
        "mjd": np.array([r.mjd for r in records], float),
        "ra": np.array([r.ra for r in records], float),
        "dec": np.array([r.dec for r in records], float),
        "mag": np.array([r.mag for r in records], float),
        "band": np.array([r.band for r in records], dtype=str),
        "code": np.array([r.code for r in records], dtype=str),
        "obs_x": obs[:, 0], "obs_y": obs[:, 1], "obs_z": obs[:, 2],
    })
