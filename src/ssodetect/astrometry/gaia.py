"""Optional online reference catalogue: Gaia DR3 from the ESA archive (astroquery), cached on disk.

Never used by the tests or the demo, which work from local files.  A query is a
cone (centre, radius) with a magnitude limit; its result is written to
``cache_dir`` as ECSV under a name derived from the query, and read from there
next time without touching the network.
"""
from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

from astropy.table import Table

from ssodetect.errors import InputError
from ssodetect.io.outputs import atomic_write_text

__all__ = ["GAIA_COLUMNS", "gaia_query", "fetch_gaia"]

log = logging.getLogger(__name__)

GAIA_COLUMNS = (
    "source_id", "ra", "dec", "ra_error", "dec_error", "pmra", "pmdec", "phot_g_mean_mag", "bp_rp", "ref_epoch",
)


def gaia_query(ra: float, dec: float, radius: float, mag_limit: float) -> str:
    """ADQL for the Gaia DR3 stars within ``radius`` [deg] of ``(ra, dec)`` [deg] with G < ``mag_limit``."""
    return (
        f"SELECT {', '.join(GAIA_COLUMNS)} FROM gaiadr3.gaia_source "
        f"WHERE CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra:.6f}, {dec:.6f}, {radius:.6f})) = 1 "
        f"AND phot_g_mean_mag < {mag_limit:.2f}"
    )


def _run_query(query: str) -> Table:
    try:
        from astroquery.gaia import Gaia
    except ImportError:
        raise InputError("the Gaia archive needs astroquery: pip install 'ssodetect[online]'") from None
    try:
        return Gaia.launch_job_async(query).get_results()
    except Exception as exc:  # network and service errors come in many types
        raise InputError(f"Gaia archive query failed ({type(exc).__name__}: {exc})") from None


def fetch_gaia(ra: float, dec: float, radius: float, *, cache_dir: str | Path, mag_limit: float = 21.0,
               run_query=_run_query) -> Path:
    """Gaia DR3 stars of a cone as a local ECSV file (downloaded once, then read from the cache).

    Parameters
    ----------
    ra, dec, radius : float
        Cone [deg].
    cache_dir : path
        Directory of cached query results.
    mag_limit : float
        Faintest G magnitude.
    run_query : callable
        ``run_query(adql) -> Table`` (the archive by default).

    Returns
    -------
    Path
        The cached ECSV file (Gaia DR3 column names), ready for ``--refcat``.
    """
    query = gaia_query(ra, dec, radius, mag_limit)
    key = hashlib.sha1(query.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"gaia_dr3_{key}.ecsv"
    if path.exists():
        log.info("Gaia DR3 cone from the cache: %s", path)
        return path
    log.info("querying the Gaia archive: cone %.4f %+.4f r=%.3f deg, G < %.1f", ra, dec, radius, mag_limit)
    table = run_query(query)
    table = Table({name: table[name] for name in GAIA_COLUMNS if name in table.colnames})
    table.meta["query"] = query
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    table.write(buffer, format="ascii.ecsv")
    atomic_write_text(path, buffer.getvalue())
    log.info("%d Gaia stars cached in %s", len(table), path)
    return path
