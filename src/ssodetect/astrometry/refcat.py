"""Reference catalogues with Gaia DR3 column names: reading, proper motions, a WCS check.

A catalogue file (ECSV, FITS, CSV or Parquet) holds ``ra, dec`` [deg] at
``ref_epoch`` [Julian year, TCB for Gaia], ``pmra`` (includes cos dec) and
``pmdec`` [mas/yr], ``ra_error, dec_error`` [mas] and ``phot_g_mean_mag``.
SCAMP/SExtractor ``FITS_LDAC`` reference catalogues (``X_WORLD, Y_WORLD,
ERRA_WORLD, ERRB_WORLD, MAG, OBSDATE``, optional ``PMALPHA, PMDELTA`` [mas/yr])
are read and renamed to the Gaia names.  Positions are propagated linearly to
the observation epoch (parallax ignored: below a milliarcsecond for almost all
field stars).
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table, vstack
from astropy.time import Time
from scipy.spatial import cKDTree

from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.errors import InputError, reason
from ssodetect.io.columns import number_column
from ssodetect.io.ldac import read_ldac

__all__ = [
    "REFCAT_REQUIRED",
    "cut_to_field",
    "load_reference_catalogue",
    "ldac_reference_table",
    "propagate",
    "compare_with_reference",
]

log = logging.getLogger(__name__)

#: Columns a reference catalogue must have.
REFCAT_REQUIRED = ("ra", "dec", "phot_g_mean_mag")
#: Optional columns and the value taken when absent.
REFCAT_DEFAULTS = {"pmra": 0.0, "pmdec": 0.0, "ra_error": 10.0, "dec_error": 10.0, "ref_epoch": 2016.0}

#: The units the columns are used in; a column that declares another unit is converted (a catalogue in radians was
#: read as degrees: no star near the field), one whose unit does not convert is refused.
REFCAT_UNITS = {"ra": u.deg, "dec": u.deg, "pmra": u.mas / u.yr, "pmdec": u.mas / u.yr, "ra_error": u.mas,
                "dec_error": u.mas, "phot_g_mean_mag": u.mag}


def _to_units(table: Table, path: Path) -> None:
    """Convert, in place, the columns of :data:`REFCAT_UNITS` that declare another unit to theirs."""
    for name, unit in REFCAT_UNITS.items():
        declared = getattr(table[name], "unit", None) if name in table.colnames else None
        if declared is None or declared == unit:
            continue
        try:
            factor = (1.0 * declared).to_value(unit)
        except (u.UnitsError, ValueError, TypeError):
            raise InputError(f"{path}: column {name} is in {declared}, which is not {unit}") from None
        table[name] = np.asarray(table[name], float) * factor
        table[name].unit = unit


_LDAC_TO_GAIA = {"X_WORLD": "ra", "Y_WORLD": "dec", "MAG": "phot_g_mean_mag", "PMALPHA": "pmra", "PMDELTA": "pmdec"}


def _is_ldac(path: Path) -> bool:
    try:
        with fits.open(path, memmap=False) as hdul:
            return any(str(h.header.get("EXTNAME", "")).upper() == "LDAC_OBJECTS" for h in hdul[1:])
    except OSError:
        return False


def _from_ldac(path: Path) -> Table:
    tables = [t for _, t in read_ldac(path)]
    table = vstack(tables) if len(tables) > 1 else tables[0]
    out = Table()
    for src, dst in _LDAC_TO_GAIA.items():
        if src in table.colnames:
            out[dst] = np.asarray(table[src], float)
    if "ERRA_WORLD" in table.colnames:
        err = np.asarray(table["ERRA_WORLD"], float) * 3.6e6  # deg -> mas
        out["ra_error"] = err
        out["dec_error"] = np.asarray(table["ERRB_WORLD"], float) * 3.6e6 if "ERRB_WORLD" in table.colnames else err
    if "OBSDATE" in table.colnames:
        out["ref_epoch"] = np.asarray(table["OBSDATE"], float)
    return out


def ldac_reference_table(catalogue: Table) -> Table:
    """A catalogue with Gaia column names as a SCAMP reference table (LDAC_OBJECTS columns).

    ``X_WORLD, Y_WORLD, ERRA_WORLD, ERRB_WORLD`` [deg], ``ERRTHETA_WORLD``, ``MAG, MAGERR``,
    ``OBSDATE`` [Julian year], ``PMALPHA, PMDELTA`` [mas/yr].
    """
    n = len(catalogue)
    return Table(
        {
            "X_WORLD": np.asarray(catalogue["ra"], float),
            "Y_WORLD": np.asarray(catalogue["dec"], float),
            "ERRA_WORLD": np.asarray(catalogue["ra_error"], float) / 3.6e6,
            "ERRB_WORLD": np.asarray(catalogue["dec_error"], float) / 3.6e6,
            "ERRTHETA_WORLD": np.zeros(n, np.float32),
            "MAG": np.asarray(catalogue["phot_g_mean_mag"], np.float32),
            "MAGERR": np.full(n, 0.01, np.float32),
            "OBSDATE": np.asarray(catalogue["ref_epoch"], float),
            "PMALPHA": np.asarray(catalogue["pmra"], float),
            "PMDELTA": np.asarray(catalogue["pmdec"], float),
        }
    )


#: (column, lowest, highest, what) of values no star has: such rows are ignored, with a warning.
IMPLAUSIBLE = [("dec", -90.0, 90.0, "deg"), ("phot_g_mean_mag", -5.0, 40.0, "mag"),
               ("ref_epoch", 1800.0, 2300.0, "Julian year"), ("pmra", -1e5, 1e5, "mas/yr"),
               ("pmdec", -1e5, 1e5, "mas/yr"), ("ra_error", 0.0, 1e5, "mas"), ("dec_error", 0.0, 1e5, "mas")]


def _starts_with_bom(path) -> bool:
    """Whether a file starts with the UTF-8 byte-order mark."""
    try:
        with open(path, "rb") as handle:
            return handle.read(3) == b"\xef\xbb\xbf"
    except OSError:
        return False


#: Rounding [mas] of stored reference positions above which a catalogue's positions are said to be coarse.
COARSE_POSITION_MAS = 5.0


def _warn_coarse_coordinates(table: Table, path) -> None:
    """Warn when ``ra``/``dec`` are stored as floats too short for astrometry (32-bit floats round an RA near
    300 deg to 110 mas, a whole Euclid pixel)."""
    for name in ("ra", "dec"):
        dtype = np.asarray(table[name]).dtype
        if dtype.kind not in "fiu" or (dtype.kind == "f" and dtype.itemsize >= 8) or len(table) == 0:
            continue
        with np.errstate(invalid="ignore"):
            top = np.nanmax(np.abs(np.asarray(table[name], float)))
        if not np.isfinite(top):
            continue
        # in the column's unit (degrees unless it says otherwise): whole numbers are rounded to 1
        step = 1.0 if dtype.kind in "iu" else float(np.spacing(np.asarray(top, dtype)))
        unit = getattr(table[name], "unit", None)
        try:
            step = (step * unit).to_value("mas") if unit is not None else step * 3.6e6
        except Exception:  # noqa: BLE001 - a unit that is no angle: _to_units names it
            continue
        if step > COARSE_POSITION_MAS:
            kind = "integers" if dtype.kind in "iu" else f"{8 * dtype.itemsize}-bit floats"
            log.warning("%s: column %s is stored as %s, rounded to up to %.0f mas: the astrometry is no finer than "
                        "that (write the catalogue with 64-bit floats)", path, name, kind, step)


def load_reference_catalogue(path: str | Path) -> Table:
    """Read a reference catalogue and bring it to the Gaia DR3 column names.

    Missing optional columns take :data:`REFCAT_DEFAULTS` (no proper motion,
    10 mas errors, epoch 2016.0; NaN values too); rows without a finite position or magnitude, and rows with an
    infinite optional value (a warning names the catalogue), are dropped.

    Raises
    ------
    InputError
        Unreadable file, or a required column (:data:`REFCAT_REQUIRED`) missing.
    """
    if not str(path).strip():  # (" " was said as ": reference catalogue not found")
        raise InputError(f"{str(path)!r}: an empty reference catalogue name")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: reference catalogue not found")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file (a FIFO, device or directory is not a catalogue)")
    suffix = path.suffix.lower()
    # the readers' warnings (a damaged FITS header) are said on one line naming the file, not as astropy's dump
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            if suffix in (".fits", ".fit", ".cat", ".ldac") and _is_ldac(path):
                table = _from_ldac(path)
            else:
                fmt = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".parquet": "parquet"}.get(suffix)
                table = Table.read(path, format=fmt) if fmt else Table.read(path)
        except InputError:
            raise
        except Exception as exc:  # astropy's readers raise many types
            first = reason(exc)
            if _starts_with_bom(path):
                first = f"it starts with a byte-order mark (saved as UTF-8 with BOM): save it as plain UTF-8; {first}"
            hint = " ".join(str(said[0].message).split())[:160] if said else ""
            raise InputError(f"{path}: not a readable catalogue ({first}" + (f"; {hint}" if hint else "") + ")") from None
    for note in dict.fromkeys(" ".join(str(w.message).split())[:200] for w in said):
        log.warning("%s: %s", path, note)
    for name in table.colnames:  # a CSV written with a byte-order mark names its first column "\ufeffra"
        if name.startswith("\ufeff") and name.lstrip("\ufeff") not in table.colnames:
            table.rename_column(name, name.lstrip("\ufeff"))
    missing = [c for c in REFCAT_REQUIRED if c not in table.colnames]
    if missing:
        raise InputError(f"{path}: reference catalogue lacks column(s) {', '.join(missing)}")
    # one float per row or a refusal naming the column: a text cell ('abc' in a CSV) made the column text, an empty
    # cell was read as its fill value 0 (a magnitude-0 star: campaign 34), true/false as 1/0, a complex value as its
    # real part, a column of several values per row broke the fits after it (internal errors)
    numbers = {name: number_column(table, name, path) for name in (*REFCAT_REQUIRED, *REFCAT_DEFAULTS)
               if name in table.colnames}
    _warn_coarse_coordinates(table, path)
    for name, values in numbers.items():  # empty cells are NaN now: their rows are ignored (said) or defaulted
        unit = getattr(table[name], "unit", None)
        table[name] = values
        table[name].unit = unit
    _to_units(table, path)
    good = np.ones(len(table), bool)
    for name, default in REFCAT_DEFAULTS.items():
        if name not in table.colnames:
            table[name] = np.full(len(table), default)
        else:
            values = np.asarray(table[name], float)
            infinite = np.isinf(values)
            if infinite.any():  # an infinite proper motion or error is a broken row, not a missing value
                log.warning("%s: %d rows with an infinite %s ignored", path, int(infinite.sum()), name)
                good &= ~infinite
            table[name] = np.where(np.isnan(values), default, values)
    if len(table) == 0:  # (said here: the run would otherwise blame the field's position on the sky)
        log.warning("%s: the reference catalogue holds no star (0 rows): no astrometric solution from it", path)
        return table
    finite = np.ones(len(table), bool)
    for name in REFCAT_REQUIRED:
        finite &= np.isfinite(np.asarray(table[name], float))
    good &= finite
    # values no star has: each named, their rows ignored (a magnitude of 1e30 had fitted a zero point of 1e30; an
    # epoch of -1e9 or a proper motion of 1e12 mas/yr moved every star off the field, blamed on the pointing)
    notes = []
    for name, lo, hi, what in IMPLAUSIBLE:
        if name not in table.colnames:
            continue
        with np.errstate(invalid="ignore"):
            values = np.asarray(table[name], float)
            odd = good & np.isfinite(values) & ((values < lo) | (values > hi))
        if odd.any():
            notes.append(f"{int(odd.sum())} rows with {name} outside {lo:g} to {hi:g} ({what}) ignored")
            good &= ~odd
    if not finite.all():  # (campaign 33: said at INFO only, the run exited 0)
        notes.insert(0, f"{int((~finite).sum())} rows without a finite {', '.join(REFCAT_REQUIRED)} ignored")
    for note in notes if good.any() else ():  # (with no row left, the error below says it in one line)
        log.warning("%s: %s", path, note)
    if not good.all():
        if not good.any():  # (with every row ignored, the run would blame the field's position on the sky)
            raise InputError(f"{path}: no row with a finite, plausible position and magnitude ({len(table)} rows: "
                             "declination within +-90 deg, magnitude -5 to 40, epoch 1800-2300, proper motions "
                             "within 100000 mas/yr, position errors 0 to 100000 mas)")
        log.info("%s: %d rows without a finite position, magnitude, proper motion or error ignored", path,
                 int((~good).sum()))
        table = table[good]
    # one star listed twice (a catalogue concatenated with itself) weighs twice in every fit and makes its matches
    # ambiguous: kept once, said (campaign 31: 50 copies of each row, not a word)
    key = np.round(np.column_stack([np.asarray(table["ra"], float), np.asarray(table["dec"], float)]) * 3.6e6)
    _, first = np.unique(key, axis=0, return_index=True)
    if first.size < len(table):
        log.warning("%s: %d rows repeat the position of another to 1 mas; each star kept once", path,
                    len(table) - first.size)
        table = table[np.sort(first)]
    return table


def propagate(catalogue: Table, epoch: Time) -> tuple[np.ndarray, np.ndarray]:
    """RA, Dec [deg] of catalogue stars at ``epoch`` (linear proper motion)."""
    years = epoch.jyear - np.asarray(catalogue["ref_epoch"], float)
    pmra = np.asarray(catalogue["pmra"], float)
    pmdec = np.asarray(catalogue["pmdec"], float)
    dec = np.asarray(catalogue["dec"], float) + pmdec * years / 3.6e6
    ra = np.asarray(catalogue["ra"], float) + pmra * years / 3.6e6 / np.cos(np.radians(dec))
    return ra, dec


def compare_with_reference(ra, dec, ref_ra, ref_dec, *, radius: float = 0.5) -> dict:
    """Offsets of detections from their nearest reference stars.

    Parameters
    ----------
    ra, dec : ndarray
        Detections [deg].
    ref_ra, ref_dec : ndarray
        Reference stars at the same epoch [deg].
    radius : float
        Match radius [arcsec].

    Returns
    -------
    dict
        ``n_matched``, median offsets ``dra``/``ddec`` and ``rms`` [arcsec]
        (NaN when nothing matches).
    """
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    if ra.size == 0 or len(ref_ra) == 0:
        return {"n_matched": 0, "dra": float("nan"), "ddec": float("nan"), "rms": float("nan")}
    plane = TangentPlane(float(np.median(ra)), float(np.median(dec)))
    x, y = plane.to_plane(ra, dec)
    rx, ry = plane.to_plane(ref_ra, ref_dec)
    dist, idx = cKDTree(np.column_stack([rx, ry])).query(np.column_stack([x, y]), distance_upper_bound=radius)
    ok = np.isfinite(dist)
    if not ok.any():
        return {"n_matched": 0, "dra": float("nan"), "ddec": float("nan"), "rms": float("nan")}
    dx = x[ok] - rx[idx[ok]]
    dy = y[ok] - ry[idx[ok]]
    return {
        "n_matched": int(ok.sum()),
        "dra": float(np.median(dx)),
        "ddec": float(np.median(dy)),
        "rms": float(np.sqrt(np.median(dx**2 + dy**2))),
    }


def cut_to_field(catalogue: Table, ra, dec, radius: float) -> Table:
    """The catalogue's stars within ``radius`` [deg] of any of the points ``(ra, dec)`` [deg].

    Used to cut a large catalogue to the field before anything is built from it (blind-solve indexes, per-
    exposure propagations): memory then follows the field, not the catalogue.
    """
    ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    if ra.size == 0 or len(catalogue) == 0:
        return catalogue
    cra, cdec = np.radians(np.asarray(catalogue["ra"], float)), np.radians(np.asarray(catalogue["dec"], float))
    stars = np.column_stack([np.cos(cdec) * np.cos(cra), np.cos(cdec) * np.sin(cra), np.sin(cdec)])
    centres = np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
    keep = np.zeros(len(catalogue), bool)
    limit = math.cos(math.radians(radius))
    for start in range(0, len(centres), 64):
        keep |= (stars @ centres[start:start + 64].T >= limit).any(axis=1)
    return catalogue[keep]
