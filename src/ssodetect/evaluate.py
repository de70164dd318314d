"""Scoring a run against simulated truth.

An output object is *true* when more than half of its observations lie within
the match radius of the same simulated mover in the same exposure; otherwise it
is a *false object*.  A simulated mover is *findable* when it is on the
detector in at least ``min_exposures`` exposures, and *found* when a true object
is assigned to it.  Completeness is reported per magnitude bin for a rate
range; the magnitude where it falls to 50 % is compared with the scene's
single-exposure 5-sigma point-source limit.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.errors import InputError
from ssodetect.io.columns import flag_column, number_column

__all__ = ["check_truth", "evaluate_wcs", "Evaluation", "evaluate_run", "format_evaluation", "evaluation_table",
           "RATE_BINS", "nearest_truth_distance", "frames_mismatch"]

log = logging.getLogger(__name__)


#: Units the truth table's columns are scored in (a column in another unit of the same kind is converted; a
#: magnitude column may carry a magnitude unit or none).
TRUTH_UNITS = {"ra": "deg", "dec": "deg", "rate": "arcsec / h", "trail_length": "pix"}
#: Plausible truth values: a magnitude [mag] and a trail length [px] outside them are refused (campaign 35: a
#: negative trail length made every object false, an infinite one let any object match).
TRUTH_MAG_RANGE = (-5.0, 40.0)
TRUTH_MAX_TRAIL_PX = 1e5


def check_truth(truth: Table, path) -> None:
    """Bring a truth table's columns to one value per row (angles, rates and trail lengths in :data:`TRUTH_UNITS`,
    ``on_detector`` true/false), or refuse it.

    A column of several values per row, true/false or complex values was an internal error or read silently; a
    table whose magnitudes are all missing or whose rates are all negative was scored as one without a bright mover,
    exit 0, and a rate in deg/s was read as arcsec/h (campaign 34); ``on_detector`` written as text "False" was
    read as true, trail lengths that are negative, infinite or in degrees and magnitudes in Jy or of -30 were used
    as they were (campaign 35).  Rows with a missing magnitude or a negative rate are said (they cannot count).

    Parameters
    ----------
    truth : Table
        A truth table of ``ssodetect simulate`` (changed in place).
    path : str or Path
        Its file (named in errors and warnings).

    Raises
    ------
    InputError
        A column that cannot be read as it must, a unit that does not convert, or a value no mover has.
    """
    truth["on_detector"] = flag_column(truth, "on_detector", path)
    for name in ("exposure", "ra", "dec", "mag", "rate", "trail_length"):
        values = number_column(truth, name, path)
        if name == "exposure":
            continue
        unit = getattr(truth[name], "unit", None)
        if unit is not None and name == "mag":
            if str(unit).strip() and "mag" not in str(unit).lower():  # (mag, ABmag, mag(AB): a magnitude)
                raise InputError(f"{path}: column mag in {unit}, not a magnitude")
        elif unit is not None:
            try:
                values = (values * u.Unit(unit)).to_value(u.Unit(TRUTH_UNITS[name]))
            except (u.UnitsError, ValueError, TypeError):
                raise InputError(f"{path}: column {name} in {unit}, not convertible to "
                                     f"{TRUTH_UNITS[name]}") from None
        truth[name] = values
    mag = np.asarray(truth["mag"], float)
    for name, odd, what in (
            ("mag", np.isfinite(mag) & ((mag < TRUTH_MAG_RANGE[0]) | (mag > TRUTH_MAG_RANGE[1])),
             f"outside {TRUTH_MAG_RANGE[0]:g} to {TRUTH_MAG_RANGE[1]:g} mag"),
            ("trail_length", ~(np.isfinite(truth["trail_length"]) & (truth["trail_length"] >= 0)
                               & (truth["trail_length"] <= TRUTH_MAX_TRAIL_PX)),
             f"not within 0 to {TRUTH_MAX_TRAIL_PX:g} px")):
        if np.any(odd):
            k = int(np.argmax(odd))
            raise InputError(f"{path}: row {k + 1}: {name} {float(truth[name][k]):g} is {what}; "
                                 f"{int(np.sum(odd))} such rows")
    mag, rate = np.asarray(truth["mag"]), np.asarray(truth["rate"])
    for name, bad, what in (("mag", ~np.isfinite(mag), "no finite magnitude"),
                            ("rate", ~(np.isfinite(rate) & (rate >= 0)), "no finite, non-negative rate")):
        if len(bad) and bad.all():  # (an empty table is said by the checks after this one)
            raise InputError(f"{path}: every row has {what} (column {name}): no mover can be scored")
        if bad.any():
            log.warning("%s: %d of %d rows with %s (column %s): their movers are not scored", path,
                        int(bad.sum()), len(truth), what, name)

#: Rate bins [arcsec/h] of the completeness against rate: slow movers, fast movers, trails.
RATE_BINS = np.array([0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0])


@dataclass
class Evaluation:
    """Scores of one run.

    Attributes
    ----------
    completeness : Table
        Per magnitude bin: ``mag_lo, mag_hi, n_findable, n_found, completeness``.
    completeness_rate : Table
        Per rate bin [arcsec/h] (:data:`RATE_BINS`), movers of ``mag <= bright_limit`` at every rate:
        ``rate_lo, rate_hi, n_findable, n_found, completeness``.
    completeness_bright : float
        Completeness for ``mag <= bright_limit`` in the rate range.
    n_objects, n_true, n_false : int
        Output objects, of which true / false.
    false_per_ccd : float
        False objects per 2048^2 px of detector.
    median_residual_bright : float
        Median astrometric residual [arcsec] of matched observations with mag < 22.
    mag50 : float
        Magnitude where completeness falls to 50 % (NaN if never).
    limit_5sigma : float
        Single-exposure 5-sigma point-source limit of the scene [mag].
    """

    completeness: Table
    completeness_bright: float
    n_findable_bright: int
    n_objects: int
    n_true: int
    n_false: int
    false_per_ccd: float
    median_residual_bright: float
    n_residuals_bright: int
    mag50: float
    limit_5sigma: float
    rate_range: tuple
    bright_limit: float
    false_objects: list
    assigned: dict | None = None  # output object -> truth object it was matched with
    completeness_rate: Table | None = None  # per rate bin, movers brighter than bright_limit, every rate


def evaluate_run(
    observations: Table,
    truth: Table,
    *,
    rate_range: tuple[float, float] = (0.5, 10.0),
    bright_limit: float = 23.5,
    min_exposures: int = 3,
    match_radius: float = 0.5,
    ccd_area_px: float | None = None,
    mag_bins: np.ndarray | None = None,
    pixels: bool = False,
) -> Evaluation:
    """Compare a run's observations with the simulated truth.

    Parameters
    ----------
    observations : Table
        ``observations.ecsv`` of the run.
    truth : Table
        ``truth.ecsv`` of the simulation.
    rate_range : (float, float)
        Rates [arcsec/h] for completeness.
    bright_limit : float
        Completeness is also summarised for movers brighter than this [mag].
    min_exposures : int
        Exposures on the detector for a mover to be findable.
    match_radius : float
        Match radius [arcsec]; half the trail length is added for trailed movers.
    ccd_area_px : float, optional
        Total detector area [px^2]; taken from the truth metadata when None.
    mag_bins : ndarray, optional
        Bin edges [mag] (default 20 to 27.5 by 0.5).
    pixels : bool
        Match on detector pixels (same exposure and CCD; ``match_radius`` in px) instead of the
        sky: for runs whose positions are relative (frames without WCS).  Residuals are then in px.
    """
    mag_bins = np.arange(20.0, 27.51, 0.5) if mag_bins is None else np.asarray(mag_bins)
    sim = truth.meta.get("simulation", {})
    if ccd_area_px is None:
        ccd_area_px = float(sim.get("nccd", 1)) * float(sim.get("nx", 2048)) * float(sim.get("ny", 2048))
    scale = float(sim.get("pixel_scale", 0.1))
    ra0 = float(np.median(truth["ra"])) if len(truth) else 0.0
    dec0 = float(np.median(truth["dec"])) if len(truth) else 0.0
    plane = TangentPlane(ra0, dec0)
    on = np.asarray(truth["on_detector"], bool)
    if pixels:
        tx, ty = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
        ox, oy = np.asarray(observations["x"], float), np.asarray(observations["y"], float)
        tol = match_radius + 0.5 * np.asarray(truth["trail_length"], float)
        t_key = [f"{e}/{c}" for e, c in zip(truth["exposure"], truth["ccd"])]
        o_key = [f"{e}/{c}" for e, c in zip(observations["exposure"], observations["ccd"])]
    else:
        tx, ty = plane.to_plane(np.asarray(truth["ra"], float), np.asarray(truth["dec"], float))
        ox, oy = plane.to_plane(np.asarray(observations["ra"], float), np.asarray(observations["dec"], float))
        tol = match_radius + 0.5 * np.asarray(truth["trail_length"], float) * scale
        t_key, o_key = list(truth["exposure"]), list(observations["exposure"])
    t_key, o_key = np.asarray(t_key), np.asarray(o_key)
    # observation -> truth row (same exposure [and CCD], within tolerance, nearest)
    matched_truth = np.full(len(observations), -1)
    residual = np.full(len(observations), np.nan)
    # on the sky an observation may be matched where the mover's mid-exposure position was off the detector (a
    # trail cut by the edge, its centre restored); in pixels only rows on a CCD have a position
    matchable = on if pixels else np.isfinite(tx) & np.isfinite(ty)
    for e in np.unique(o_key) if len(observations) else []:
        t_idx = np.nonzero((t_key == e) & matchable)[0]
        o_idx = np.nonzero(o_key == e)[0]
        if t_idx.size == 0:
            continue
        tree = cKDTree(np.column_stack([tx[t_idx], ty[t_idx]]))
        nk = min(5, t_idx.size)
        d, k = tree.query(np.column_stack([ox[o_idx], oy[o_idx]]), k=nk)
        d, k = d.reshape(len(o_idx), nk), k.reshape(len(o_idx), nk)
        for row, (dd, kk) in enumerate(zip(d, k)):
            ok = dd <= tol[t_idx[kk]]
            if ok.any():
                j = int(np.argmax(ok))
                matched_truth[o_idx[row]] = t_idx[kk[j]]
                residual[o_idx[row]] = dd[j]
    truth_object = np.asarray(truth["object"])
    assigned: dict[str, str] = {}
    false_objects = []
    names = np.asarray(observations["object"]) if len(observations) else np.array([], dtype=str)
    for name in np.unique(names):
        rows = np.nonzero(names == name)[0]
        hits = [truth_object[m] for m in matched_truth[rows] if m >= 0]
        best, count = Counter(hits).most_common(1)[0] if hits else (None, 0)
        if best is not None and count > 0.5 * rows.size:
            assigned[name] = best
        else:
            false_objects.append(str(name))
    found = set(assigned.values())
    # findable movers
    per_obj = {}
    for row in truth:
        key = row["object"]
        entry = per_obj.setdefault(key, {"n_on": 0, "mag": float(row["mag"]), "rate": float(row["rate"])})
        entry["n_on"] += int(bool(row["on_detector"]))
    findable = [
        (k, v["mag"]) for k, v in per_obj.items()
        if v["n_on"] >= min_exposures and rate_range[0] <= v["rate"] <= rate_range[1]
    ]
    by_rate = [(k, v["rate"]) for k, v in per_obj.items() if v["n_on"] >= min_exposures and v["mag"] <= bright_limit]
    fmag = np.array([m for _, m in findable])
    ffound = np.array([k in found for k, _ in findable], bool)
    curve = _binned(fmag, ffound, mag_bins, "mag")
    rate_curve = _binned(np.array([r for _, r in by_rate]), np.array([k in found for k, _ in by_rate], bool), RATE_BINS,
                         "rate")
    bright = fmag <= bright_limit
    completeness_bright = float(ffound[bright].mean()) if bright.any() else float("nan")
    mag50 = _mag50(curve)
    true_obs = np.array([assigned.get(n) is not None for n in names], bool)
    tmag = np.array([float(truth["mag"][m]) if m >= 0 else np.nan for m in matched_truth])
    res_sel = true_obs & (matched_truth >= 0) & (tmag < 22.0)
    n_false = len(false_objects)
    return Evaluation(
        completeness=curve,
        completeness_bright=completeness_bright,
        n_findable_bright=int(bright.sum()),
        n_objects=len(np.unique(names)),
        n_true=len(assigned),
        n_false=n_false,
        false_per_ccd=n_false / (ccd_area_px / 2048.0**2),
        median_residual_bright=float(np.median(residual[res_sel])) if res_sel.any() else float("nan"),
        n_residuals_bright=int(res_sel.sum()),
        mag50=mag50,
        limit_5sigma=float(truth.meta.get("limit_5sigma", np.nan)),
        rate_range=tuple(rate_range),
        bright_limit=bright_limit,
        false_objects=false_objects,
        assigned=assigned,
        completeness_rate=rate_curve,
    )


def _binned(values: np.ndarray, found: np.ndarray, edges: np.ndarray, name: str) -> Table:
    """Completeness per bin of ``values``: ``<name>_lo, <name>_hi, n_findable, n_found, completeness`` (NaN when
    a bin is empty)."""
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (values >= lo) & (values < hi)
        n = int(sel.sum())
        rows.append((lo, hi, n, int(found[sel].sum()), float(found[sel].mean()) if n else np.nan))
    return Table(rows=rows, names=[f"{name}_lo", f"{name}_hi", "n_findable", "n_found", "completeness"]) if rows \
        else Table()


def evaluation_table(ev: Evaluation) -> Table:
    """Completeness against magnitude and against rate in one table (``evaluation.ecsv``): ``axis`` (``mag``:
    movers in the rate range; ``rate`` [arcsec/h]: movers brighter than the bright limit), ``lo``, ``hi``,
    ``n_findable``, ``n_found``, ``completeness``; the scores in its metadata."""
    rows = [("mag", float(r["mag_lo"]), float(r["mag_hi"]), int(r["n_findable"]), int(r["n_found"]),
             float(r["completeness"])) for r in ev.completeness]
    if ev.completeness_rate is not None:
        rows += [("rate", float(r["rate_lo"]), float(r["rate_hi"]), int(r["n_findable"]), int(r["n_found"]),
                  float(r["completeness"])) for r in ev.completeness_rate]
    table = Table(rows=rows or None, names=["axis", "lo", "hi", "n_findable", "n_found", "completeness"],
                  dtype=["U4", "f8", "f8", "i8", "i8", "f8"])
    table.meta.update({"rate_range_arcsec_h": list(ev.rate_range), "bright_limit_mag": ev.bright_limit,
                       "completeness_bright": ev.completeness_bright, "n_objects": ev.n_objects, "n_true": ev.n_true,
                       "n_false": ev.n_false, "false_per_ccd": ev.false_per_ccd, "mag50": ev.mag50,
                       "median_residual_bright_arcsec": ev.median_residual_bright})
    return table


def _mag50(curve: Table) -> float:
    """First crossing of 50 % completeness, interpolated between bin centres."""
    if len(curve) == 0:
        return float("nan")
    centres = 0.5 * (np.asarray(curve["mag_lo"]) + np.asarray(curve["mag_hi"]))
    comp = np.asarray(curve["completeness"], float)
    ok = np.isfinite(comp)
    centres, comp = centres[ok], comp[ok]
    for k in range(1, comp.size):
        if comp[k - 1] >= 0.5 > comp[k]:
            f = (comp[k - 1] - 0.5) / (comp[k - 1] - comp[k])
            return float(centres[k - 1] + f * (centres[k] - centres[k - 1]))
    return float("nan")


def format_evaluation(ev: Evaluation) -> str:
    """Human-readable report: completeness curve and the summary scores."""
    lo, hi = ev.rate_range
    lines = [f"Completeness for movers of {lo:g}-{hi:g} arcsec/h on the detector in >= 3 exposures:"]
    lines.append("   mag range     found/findable  completeness")
    for row in ev.completeness:
        comp = row["completeness"]
        bar = "#" * int(round(20 * comp)) if np.isfinite(comp) else ""
        comp_txt = f"{100 * comp:6.1f} %" if np.isfinite(comp) else "     - "
        lines.append(f"  {row['mag_lo']:5.2f}-{row['mag_hi']:5.2f}   {row['n_found']:5d}/{row['n_findable']:<5d}    {comp_txt} {bar}")
    if ev.n_findable_bright:
        lines.append(f"completeness V <= {ev.bright_limit:g}: {100 * ev.completeness_bright:.1f} % of "
                     f"{ev.n_findable_bright} movers")
    else:
        lines.append(f"completeness V <= {ev.bright_limit:g}: no mover that bright on the detector in >= 3 exposures")
    lines.append(f"objects: {ev.n_objects} ({ev.n_true} true, {ev.n_false} false; {ev.false_per_ccd:.2f} false per 2048^2 CCD)")
    if ev.n_residuals_bright:
        lines.append(f"median astrometric residual (V < 22): {1000 * ev.median_residual_bright:.1f} mas over "
                     f"{ev.n_residuals_bright} observations")
    else:
        lines.append("median astrometric residual (V < 22): no observation of a mover that bright")
    if np.isfinite(ev.mag50):
        lines.append(f"50 % completeness at V = {ev.mag50:.2f}; single-exposure 5-sigma point-source limit "
                     f"{ev.limit_5sigma:.2f} (difference {ev.limit_5sigma - ev.mag50:+.2f} mag)")
    else:
        lines.append(f"50 % completeness: not reached in any magnitude bin, or too few movers to tell; single-exposure "
                     f"5-sigma point-source limit {ev.limit_5sigma:.2f}")
    return "\n".join(lines)


def evaluate_wcs(solutions: Table, truth_wcs: Table, *, grid: int = 21) -> Table:
    """Accuracy of fitted WCSs against the simulated truth, over each CCD.

    Parameters
    ----------
    solutions : Table
        ``astrometry.ecsv`` of a run (``exposure, ccd, status, wcs_header``).
    truth_wcs : Table
        ``truth_wcs.ecsv`` of the simulation (``exposure, ccd, nx, ny, wcs_header``).
    grid : int
        Points per axis of the comparison grid.

    Returns
    -------
    Table
        One row per solved CCD exposure: ``exposure, ccd, n_stars, rms_mas,
        max_mas`` (on-sky difference over the grid [mas]).
    """
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    from ssodetect.simulate.starfield import wcs_difference

    truth = {(int(r["exposure"]), str(r["ccd"])): r for r in truth_wcs}
    rows = []
    for sol in solutions:
        key = (int(sol["exposure"]), str(sol["ccd"]))
        if sol["status"] != "ok" or key not in truth:
            continue
        t = truth[key]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            w_true = WCS(fits.Header.fromstring(str(t["wcs_header"])))
            w_fit = WCS(fits.Header.fromstring(str(sol["wcs_header"])))
        d = wcs_difference(w_fit, w_true, (int(t["ny"]), int(t["nx"])), n=grid)
        rows.append((key[0], key[1], int(sol["n_stars"]), float(np.sqrt(np.mean(d**2))), float(d.max())))
    return Table(rows=rows, names=["exposure", "ccd", "n_stars", "rms_mas", "max_mas"],
                 dtype=[int, "U32", int, float, float])


def evaluate_identification(observations: Table, objects: Table, truth: Table, *, min_exposures: int = 3,
                            match_radius: float = 0.5) -> dict:
    """How well linked objects were named after the known objects of a simulated scene.

    Truth rows with a ``designation`` are known objects.  An output object is *correctly named*
    when it matches a known object (as :func:`evaluate_run` matches them) and carries its
    designation; *misnamed* when it carries a designation that is not that of its match (an
    unknown mover or a false object named, or the wrong name).

    Returns
    -------
    dict
        ``n_known`` (known objects on the detector in >= ``min_exposures`` exposures), ``n_found``
        (of those, linked), ``n_named`` (correctly named), ``n_misnamed``, ``named_of_found`` and
        ``named_of_known`` (fractions).
    """
    ev = evaluate_run(observations, truth, rate_range=(0.0, 1e9), min_exposures=min_exposures,
                      match_radius=match_radius)
    assigned = ev.assigned or {}
    desig_col = truth["designation"].filled("") if hasattr(truth["designation"], "filled") else truth["designation"]
    truth_desig = {str(o): str(d) for o, d in zip(truth["object"], desig_col)}
    on = Counter(str(o) for o, flag in zip(truth["object"], truth["on_detector"]) if flag)
    known = {o for o, d in truth_desig.items() if d and on.get(o, 0) >= min_exposures}
    names = {str(o): str(d) for o, d in zip(objects["object"], objects["designation"])} if len(objects) else {}
    found = {t for t in assigned.values() if t in known}
    named = {assigned[o] for o, d in names.items() if d and o in assigned and truth_desig.get(assigned[o]) == d}
    misnamed = [o for o, d in names.items() if d and (o not in assigned or truth_desig.get(assigned[o]) != d)]
    return {
        "n_known": len(known), "n_found": len(found), "n_named": len(named & known), "n_misnamed": len(misnamed),
        "named_of_found": len(named & found) / len(found) if found else float("nan"),
        "named_of_known": len(named & known) / len(known) if known else float("nan"),
    }


def nearest_truth_distance(run_ra, run_dec, truth_ra, truth_dec) -> float:
    """Angular distance [deg] from the run's sky points (its observations, its solved CCDs' reference points) to
    the nearest object of a truth table; NaN when either side has no valid position.  A truth table of another
    field lies degrees away (a run at RA 150 scored against a truth at RA 0 reported 0 found, as if measured).

    Parameters
    ----------
    run_ra, run_dec, truth_ra, truth_dec : array_like
        [deg, ICRS]; NaNs and declinations beyond +-90 are left out.
    """
    from astropy.coordinates import SkyCoord

    def valid(ra, dec):
        ra, dec = np.asarray(ra, float).ravel(), np.asarray(dec, float).ravel()
        keep = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)
        return ra[keep], dec[keep]

    (ra, dec), (t_ra, t_dec) = valid(run_ra, run_dec), valid(truth_ra, truth_dec)
    if not ra.size or not t_ra.size:
        return float("nan")
    _, sep, _ = SkyCoord(t_ra, t_dec, unit="deg").match_to_catalog_sky(SkyCoord(ra, dec, unit="deg"))
    return float(np.min(sep.deg))


#: A run's exposure and the truth's exposure of the same number are one exposure when their mid-exposure times
#: differ by at most this [s] (another simulation of the same field has other times: its scores were meaningless).
MAX_TRUTH_TIME_OFFSET_S = 60.0


def exposure_time_mismatch(observations: Table, truth: Table) -> str | None:
    """Why a truth table's exposures are not the run's, or None when they agree.

    Each exposure number in ``observations`` must be in ``truth`` with a mid-exposure MJD within
    :data:`MAX_TRUTH_TIME_OFFSET_S` (medians of each side's rows; both UTC).  Without an ``mjd`` column on either
    side the times are not judged.

    Parameters
    ----------
    observations : Table
        ``observations.ecsv`` of a run (``exposure``, ``mjd`` [d, UTC mid-exposure]).
    truth : Table
        ``truth.ecsv`` of a simulation (``exposure``, ``mjd``).
    """
    if "mjd" not in observations.colnames or "mjd" not in truth.colnames or not len(observations):
        return None
    t_exp, t_mjd = np.asarray(truth["exposure"]), np.asarray(truth["mjd"], float)
    o_exp, o_mjd = np.asarray(observations["exposure"]), np.asarray(observations["mjd"], float)
    for e in np.unique(o_exp):
        there = t_mjd[(t_exp == e) & np.isfinite(t_mjd)]
        here = o_mjd[(o_exp == e) & np.isfinite(o_mjd)]
        if not here.size:
            continue
        if not there.size:
            return f"the run's exposure {e} is not in it"
        offset = abs(float(np.median(here)) - float(np.median(there))) * 86400.0
        if offset > MAX_TRUTH_TIME_OFFSET_S:
            return (f"its exposure {e} is at MJD {float(np.median(there)):.6f}, the run's at "
                    f"{float(np.median(here)):.6f} ({offset:.0f} s apart; at most {MAX_TRUTH_TIME_OFFSET_S:g} s)")
    return None


def frames_mismatch(inputs: list, truth: Table) -> str | None:
    """Why a truth table belongs to another scene than a run's frames, or None when it may be theirs.

    A simulation records the SHA-256 of each frame it wrote in ``truth.meta["frames"]``; the run's manifest records
    its inputs' SHA-256.  None of the run's frames among the truth's: another scene (a simulation of the same field
    and times with another seed scores as if the run had missed everything).  Without digests on either side the
    frames are not judged.

    Parameters
    ----------
    inputs : list of dict
        The manifest's ``inputs`` (``path``, ``role``, ``sha256``).
    truth : Table
        ``truth.ecsv`` of a simulation.
    """
    frames = truth.meta.get("frames")
    digests = {str(item.get("sha256")) for item in inputs if isinstance(item, dict) and item.get("sha256")}
    if not isinstance(frames, dict) or not frames or not digests:
        return None
    if digests & {str(v) for v in frames.values()}:
        return None
    return (f"none of the run's {len(digests)} input files is among the {len(frames)} frames simulated with it "
            f"({', '.join(sorted(frames)[:3])}{' ...' if len(frames) > 3 else ''})")

