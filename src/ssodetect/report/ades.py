"""IAU ADES pipe-separated values (PSV) for optical observations.

Follows the ADES 2022 field definitions (``general.xsd``): ``obsTime`` is the
UTC mid-exposure time in ISO-8601 with a ``Z``; ``ra``/``dec`` in decimal
degrees; ``rmsRA`` (which includes cos(dec)) and ``rmsDec`` in arcsec;
``trkSub`` at most 8 characters of ``[-A-Za-z0-9_]``.
"""
from __future__ import annotations

import math
import re

from astropy.table import Table
from astropy.time import Time

from ssodetect.config import ReportConfig

__all__ = ["ADES_COLUMNS", "format_obs_time", "ades_psv"]

ADES_COLUMNS = ["trkSub", "mode", "stn", "obsTime", "ra", "dec", "rmsRA", "rmsDec", "astCat", "mag", "rmsMag", "band", "exp", "logSNR"]
_TRKSUB = re.compile(r"^[-A-Za-z0-9_]{1,8}$")


def format_obs_time(mjd: float, *, decimals: int = 3) -> str:
    """ISO-8601 UTC time with ``decimals`` digits of seconds and a trailing ``Z``."""
    t = Time(mjd, format="mjd", scale="utc")
    t.precision = decimals
    return t.isot + "Z"


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return format(value, spec)


def ades_psv(observations: Table, config: ReportConfig, *, band: str = "") -> str:
    """ADES PSV text for an observation table.

    Parameters
    ----------
    observations : Table
        Rows of ``observations.ecsv`` (columns ``object, mjd, ra, dec, ra_err,
        dec_err, mag, mag_err, exptime, snr``).
    config : ReportConfig
        Station code, names, astrometric catalogue.
    band : str
        Photometric band (``config.band`` wins when set).

    Returns
    -------
    str
        The PSV document, header and one line per observation (header only when
        the table is empty).

    Raises
    ------
    ValueError
        An object identifier is not a valid ADES trkSub.
    """
    lines = ["# version=2022", "# observatory", f"! mpcCode {config.station}"]
    if config.observatory_name:
        lines.append(f"! name {config.observatory_name}")
    lines += ["# submitter", f"! name {config.submitter}"]
    rows = []
    band = config.band or band
    for row in observations:
        trk = str(row["object"])
        if not _TRKSUB.match(trk):
            raise ValueError(f"object id {trk!r} is not a valid ADES trkSub")
        mag = float(row["mag"])
        has_mag = math.isfinite(mag) and bool(band)
        snr = float(row["snr"])
        rows.append(
            [
                trk,
                "CCD",
                config.station,
                format_obs_time(float(row["mjd"])),
                _fmt(float(row["ra"]), ".7f"),
                _fmt(float(row["dec"]), "+.7f"),
                _fmt(max(float(row["ra_err"]), 0.001), ".3f"),
                _fmt(max(float(row["dec_err"]), 0.001), ".3f"),
                config.astcat,
                _fmt(mag, ".2f") if has_mag else "",
                _fmt(float(row["mag_err"]), ".2f") if has_mag else "",
                band if has_mag else "",
                _fmt(float(row["exptime"]), ".1f"),
                _fmt(math.log10(snr), ".2f") if snr > 0 else "",
            ]
        )
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(ADES_COLUMNS)]
    lines.append("|".join(c.ljust(w) for c, w in zip(ADES_COLUMNS, widths)))
    for r in rows:
        lines.append("|".join(v.ljust(w) for v, w in zip(r, widths)))
    return "\n".join(lines) + "\n"
