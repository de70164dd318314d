"""Known objects from IMCCE's SkyBoT service (online, optional; through astroquery).

SkyBoT returns, for a cone and an epoch, every known object in it with its position, rates and V.
The positions are moved to each observation time along the rates (linear: good to far better than
an arcsecond over the hours of one sequence) and matched exactly as catalogue predictions are
(:func:`ssodetect.known.identify.match_predictions`).  Never used by the tests or the demo; the
offline path (local orbit files) is the default.
"""
from __future__ import annotations

import logging

import numpy as np
from astropy.table import Table

from ssodetect.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["skybot_cone", "predictions_from_skybot"]


def predictions_from_skybot(table: Table, epoch_mjd: float, times) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Positions of SkyBoT objects at ``times`` [MJD UTC] from their position at ``epoch_mjd`` and rates.

    Parameters
    ----------
    table : Table
        An astroquery ``Skybot.cone_search`` answer: ``Number``, ``Name``, ``RA``, ``DEC`` [deg],
        ``RA_rate`` (RA*cos(dec)) and ``DEC_rate`` [arcsec/h], ``V`` [mag].

    Returns
    -------
    ident : dict
        ``designation``, ``number``, ``provisional`` arrays (n,).
    pra, pdec, pV : ndarray (n, m)
    """
    def col(name):
        c = table[name]
        return np.asarray(getattr(c, "value", c), float)

    n = len(table)
    numbers = np.array([int(v) if str(v).strip().lstrip("-").isdigit() else -1
                        for v in (table["Number"].filled(-1) if hasattr(table["Number"], "filled") else table["Number"])])
    names = [str(v) for v in table["Name"]]
    designation = np.array([f"({num}) {name}" if num > 0 else name for num, name in zip(numbers, names)], dtype=str)
    provisional = np.array([name if num <= 0 else "" for num, name in zip(numbers, names)], dtype=str)
    ra0, dec0, vra, vdec = col("RA"), col("DEC"), col("RA_rate"), col("DEC_rate")
    dt_h = (np.asarray(times, float)[None, :] - epoch_mjd) * 24.0
    pdec = dec0[:, None] + vdec[:, None] * dt_h / 3600.0
    pra = (ra0[:, None] + vra[:, None] * dt_h / 3600.0 / np.cos(np.radians(dec0[:, None]))) % 360.0
    pV = np.repeat(col("V")[:, None], dt_h.shape[1], axis=1) if "V" in table.colnames else np.full((n, dt_h.shape[1]), np.nan)
    return {"designation": designation, "number": numbers, "provisional": provisional}, pra, pdec, pV


def skybot_cone(ra: float, dec: float, radius_deg: float, epoch_mjd: float, location: str = "500") -> Table:
    """Query SkyBoT (online) for the known objects in a cone at an epoch [MJD UTC].

    Raises
    ------
    ConfigError
        astroquery is not installed (``pip install ssodetect[online]``) or the service cannot be reached.
    """
    try:
        from astropy import units as u
        from astropy.coordinates import SkyCoord
        from astropy.time import Time
        from astroquery.imcce import Skybot
    except ImportError:
        raise ConfigError("[known] skybot = true needs astroquery: pip install 'ssodetect[online]'") from None
    try:
        table = Skybot.cone_search(SkyCoord(ra, dec, unit="deg"), radius_deg * u.deg,
                                   Time(epoch_mjd, format="mjd", scale="utc"), location=location)
    except Exception as exc:  # noqa: BLE001 - any failure of the remote service (no object is also an error there)
        if "No solar system object" in str(exc):
            return Table({"Number": [], "Name": [], "RA": [], "DEC": [], "RA_rate": [], "DEC_rate": [], "V": []})
        raise ConfigError(f"SkyBoT query failed ({exc})") from None
    log.info("SkyBoT: %d known objects within %.2f deg of (%.4f, %.4f)", len(table), radius_deg, ra, dec)
    return table
