"""End-to-end run: ingest -> per-CCD detection -> astrometry -> stationary removal -> linking -> outputs.

:func:`run_pipeline` is the Python API behind ``ssodetect run``.  Every product
is staged and moved into the output directory only when the run succeeds, so a
failed run leaves nothing half-written.
"""
from __future__ import annotations

import json
import logging
import math
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack
from scipy.spatial import cKDTree

from ssodetect._version import __version__
from ssodetect.astrometry.refcat import compare_with_reference, load_reference_catalogue, propagate
from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.config import Config, dump_toml
from ssodetect.calibrate import build_masters
from ssodetect.errors import ConfigError, InputError
from ssodetect.io import OutputStage, find_inputs, group_exposures, scan_file, scan_inputs
from ssodetect.io.headers import station_code
from ssodetect.columns import describe, empty_table
from ssodetect.link import Tracklet, fit_linear_motion, link_tracklets, occupied_elsewhere, static_on_detector, static_on_sky
from ssodetect.link.streaks import link_streaks
from ssodetect.pipeline.astrometry import (
    SolveTask,
    apply_solutions,
    astrometry_tasks,
    register_unplaced,
    solution_table,
    wcs_from_header_string,
    write_refined_headers,
)
from ssodetect.pipeline.ccd import empty_ccd_table, process_ccd, subtracted_image
from ssodetect.pipeline.known import identify_known, load_orbits, recover_known
from ssodetect.pipeline.ml import vet_objects
from ssodetect.pipeline.stack import stack_objects
from ssodetect.pipeline.executor import make_executor
from ssodetect.report import tracklet_tables
from ssodetect.report.cutouts import extract_cutouts
from ssodetect.report.products import write_reports

__all__ = ["RunResult", "run_pipeline", "run_astrometry", "select_candidates", "resolve_refcat"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run produced (also written to the output directory)."""

    observations: Table
    objects: Table
    candidates: Table
    astrometry: Table | None = None
    streaks: Table | None = None
    timings: dict = field(default_factory=dict)
    ccd_info: list = field(default_factory=list)
    outdir: Path | None = None
    exposures: list = field(default_factory=list)
    masters: dict = field(default_factory=dict)
    known: Table | None = None
    wcs_headers: dict = field(default_factory=dict)
    vetting: Table | None = None


class _Process:
    """Picklable per-CCD task bound to a configuration."""

    def __init__(self, config: Config, require_wcs: bool = True, masters: dict | None = None):
        self.config = config
        self.require_wcs = require_wcs
        self.masters = masters or {}

    def __call__(self, ref):
        return process_ccd(ref, self.config, require_wcs=self.require_wcs, calibration=self.masters.get(ref.ccd))


def build_calibration(refs: list, config: Config) -> tuple[list, dict]:
    """Light frames of the inputs and, per CCD, the masters built from the calibration frames.

    Calibration frames are those recognised among the inputs by their type keyword plus
    the files listed in ``[calibrate]``.  Returns ``(lights, {ccd: MasterFrames})``; the
    dict is empty when calibration is off or there is nothing to calibrate with.
    """
    cc = config.calibrate
    lights = [ref for ref in refs if ref.frame_type == "light"]
    if not cc.enabled:
        return lights, {}
    frames: dict[str, dict[str, list]] = {}
    listed = [(kind, ref) for kind in ("bias", "dark", "flat") for path in getattr(cc, kind)
              for ref in scan_file(Path(path), config.io)]
    for kind, ref in [(ref.frame_type, ref) for ref in refs if ref.frame_type != "light"] + listed:
        frames.setdefault(ref.ccd, {}).setdefault(kind, []).append((ref.path, ref.sci))
    masters = {ccd: build_masters(kinds, overscan=cc.overscan, trim=cc.trim, sigma=cc.clip_sigma,
                                  exptime_keys=config.io.exptime_keys) for ccd, kinds in frames.items()}
    return lights, {ccd: m for ccd, m in masters.items() if not m.empty}


def select_candidates(detections: Table, config: Config, plane: TangentPlane, t0_mjd: float) -> Table:
    """Usable detections (PSF-like, trailed or extended; unflagged) with their static flags.

    Moving-object candidates are the usable ones neither static on sky or
    detector nor extended; the extended ones still count as occupants of the sky.

    Adds ``xi, eta`` [arcsec], ``t_hours``, ``sigma`` and ``size`` [arcsec] columns and the
    flags ``static`` and ``artefact`` to a copy of the usable detections.
    """
    # long trails cross flagged pixels often; their measurement masks them, so they stay usable
    long_trail = (np.asarray(detections["kind"]) == "trail") & (
        np.asarray(detections["length"], float) >= config.streaks.min_length
    )
    # a source cut by the image edge within its core has a biased centroid (and a star drifting off the
    # edge looks like a mover)
    truncated = np.asarray(detections["edge_cut"], bool)
    usable = (
        np.isin(detections["kind"], ["point", "trail", "extended"])
        & ((~np.asarray(detections["near_mask"], bool) & ~truncated) | long_trail)
        & (np.asarray(detections["snr"]) > 0)
        & np.isfinite(np.asarray(detections["ra"], float))
    )
    cand = detections[usable]
    xi, eta = plane.to_plane(np.asarray(cand["ra"], float), np.asarray(cand["dec"], float))
    cand["xi"] = xi
    cand["eta"] = eta
    cand["t_hours"] = (np.asarray(cand["mjd"], float) - t0_mjd) * 24.0
    cand["sigma"] = np.sqrt(0.5 * (np.asarray(cand["ra_err"]) ** 2 + np.asarray(cand["dec_err"]) ** 2))
    link = config.link
    # source size for the static-match radius: the full extent of galaxies, only the width of trails
    # (a trail's length says how far it moved, not where a static counterpart could sit)
    # (and nothing for point sources, whose isophotal size grows with brightness, not with centroid jitter)
    kind = np.asarray(cand["kind"])
    extent = np.where(kind == "trail", np.asarray(cand["b"]), np.where(kind == "extended", np.asarray(cand["a"]), 0.0))
    cand["size"] = extent * np.asarray(cand["pixel_scale"])
    cand["static"] = static_on_sky(
        np.asarray(cand["exposure"]), np.asarray(cand["t_hours"]), xi, eta, np.asarray(cand["sigma"]),
        radius=np.maximum(link.static_radius, 0.5 * np.asarray(cand["size"])), min_matches=link.static_min_matches, min_rate=link.min_rate,
        min_fraction=link.static_min_fraction,
    )
    # a source trailed by more than min_length moved during the exposure: never static
    # (unless the telescope trailed everything: then stars are trails too)
    if not config.astrometry.trailed_stars:
        moved = (np.asarray(cand["kind"]) == "trail") & (np.asarray(cand["length"], float) >= config.streaks.min_length)
        cand["static"] = np.asarray(cand["static"]) & ~moved
    cand["artefact"] = static_on_detector(
        np.asarray(cand["exposure"]), np.asarray(cand["ccd"]), np.asarray(cand["x"]), np.asarray(cand["y"]), xi, eta,
        radius_px=link.detector_static_radius, min_sky_shift=3.0 * link.static_radius,
    )
    return cand


def _vet_occupancy(tracklets, moving: Table, usable: Table, exposures, config: Config) -> list:
    """Drop tracklets whose positions stay occupied after the object moved on (static sources)."""
    if not tracklets:
        return tracklets
    pos = np.column_stack([np.asarray(usable["xi"]), np.asarray(usable["eta"])])
    expo = np.asarray(usable["exposure"])
    trees = {e.index: cKDTree(pos[expo == e.index]) for e in exposures if np.any(expo == e.index)}
    t_exp = {e.index: (float(e.mid_time.mjd) - float(exposures[0].mid_time.mjd)) * 24.0 for e in exposures}
    kept = []
    for trk in tracklets:
        idx = np.array(trk.members)
        radius = np.maximum.reduce([
            np.full(idx.size, config.link.static_radius),
            3.0 * np.asarray(moving["sigma"])[idx],
            np.asarray(moving["size"])[idx],
        ])
        predicted = {k: (trk.x0 + trk.vx * (t - trk.t_ref), trk.y0 + trk.vy * (t - trk.t_ref)) for k, t in t_exp.items()}
        frac = occupied_elsewhere(
            np.asarray(moving["exposure"])[idx], np.asarray(moving["xi"])[idx], np.asarray(moving["eta"])[idx],
            radius, predicted, trees,
        )
        if not np.isfinite(frac) or frac > config.link.max_occupied_fraction:
            log.debug("tracklet at (%.1f, %.1f) rejected: occupancy %.2f (NaN: motion unresolved)", trk.x0, trk.y0, frac)
            continue
        kept.append(trk)
    return kept


#: Columns of ``streaks.ecsv``: every trail and streak of the run and what became of it.
STREAK_COLUMNS = [
    ("exposure", "i8", "", "exposure index"),
    ("ccd", "U32", "", "CCD identifier"),
    ("x", "f8", "pix", "trail centre (mid-exposure position), 0-based"),
    ("y", "f8", "pix", "trail centre, 0-based"),
    ("ra", "f8", "deg", "trail centre"),
    ("dec", "f8", "deg", "trail centre"),
    ("length", "f8", "pix", "trail length"),
    ("trail_arcsec", "f8", "arcsec", "trail length on the sky"),
    ("trail_pa", "f8", "deg", "trail axis position angle, 0-180"),
    ("rate", "f8", "arcsec / h", "rate implied by the trail length and exposure time"),
    ("mag", "f8", "mag", "magnitude"),
    ("snr", "f8", "", "signal-to-noise ratio"),
    ("status", "U10", "", "linked (to object) | single (SSO-like trail seen in one exposure) | satellite | bleed | spike | edge"),
    ("object", "U8", "", "object identifier when linked"),
]


#: Relative uncertainty of the part of a cut trail that lies beyond the detector edge: the far end of a
#: faint trail is measured short, which the restored centre inherits (bench_streaks, 6 seeds: the two
#: restored trails were off by 0.35 and 0.77 of the missing length).
CUT_END_ERROR = 0.5


def _restore_cut_centres(trails: Table, trk, plane: TangentPlane, *, iterations: int = 5):
    """Move the centres of members cut by the detector edge to the object's mid-exposure position.

    The visible part of a cut trail ends at the object's true position at one end of the
    exposure; the whole trail is ``rate * exptime`` long, so its centre lies half the missing
    length further towards the cut end.  The rate comes from the tracklet's line, which the
    cut member's own position biases: shift, refit, shift again from the measured position
    (the bias shrinks by about half the exposure over the time between exposures each time).
    Updates ``xi, eta, ra, dec, x, y`` of those rows of ``trails`` (``x, y`` possibly off the
    detector); their along-track error grows by the rate uncertainty times half the exposure
    and by :data:`CUT_END_ERROR` of the missing length.  Returns the tracklet refitted.
    """
    cut = [k for k in trk.members if math.isfinite(float(trails["cut_pa"][k]))]
    if not cut:
        return trk
    idx = np.array(trk.members)
    seen = {k: (float(trails["xi"][k]), float(trails["eta"][k]), float(trails["x"][k]), float(trails["y"][k]))
            for k in cut}
    missing = {}

    def refit():
        p, c, chi2, t_ref = fit_linear_motion(np.asarray(trails["t_hours"], float)[idx], np.asarray(trails["xi"], float)[idx],
                                              np.asarray(trails["eta"], float)[idx], np.asarray(trails["sigma"], float)[idx])
        return Tracklet(trk.members, p[0], p[1], p[2], p[3], c, chi2, trk.dof, t_ref)

    for _ in range(iterations):
        rate = math.hypot(trk.vx, trk.vy)
        for k in cut:
            pa = math.radians(float(trails["cut_pa"][k]))
            missing[k] = max(rate * float(trails["exptime"][k]) / 3600.0 - float(trails["trail_arcsec"][k]), 0.0)
            shift = 0.5 * missing[k]
            xi0, eta0, x0, y0 = seen[k]
            trails["xi"][k], trails["eta"][k] = xi0 + shift * math.sin(pa), eta0 + shift * math.cos(pa)
            step = np.sign(int(trails["cut"][k])) * shift / float(trails["pixel_scale"][k])
            trails["x"][k] = x0 + step * math.cos(float(trails["theta"][k]))
            trails["y"][k] = y0 + step * math.sin(float(trails["theta"][k]))
        trk = refit()
    rate_err = math.sqrt(max(trk.cov[2, 2] + trk.cov[3, 3], 0.0))
    for k in cut:
        pa = math.radians(float(trails["cut_pa"][k]))
        ra, dec = plane.to_sky(np.array([trails["xi"][k]]), np.array([trails["eta"][k]]))
        trails["ra"][k], trails["dec"][k] = float(ra[0]), float(dec[0])
        # along-track error: the rate's, plus the far end's (faint ends fade)
        along = math.hypot(0.5 * rate_err * float(trails["exptime"][k]) / 3600.0, CUT_END_ERROR * missing[k])
        trails["ra_err"][k] = math.hypot(float(trails["ra_err"][k]), along * math.sin(pa))
        trails["dec_err"][k] = math.hypot(float(trails["dec_err"][k]), along * math.cos(pa))
        trails["sigma"][k] = math.hypot(float(trails["sigma"][k]), along / math.sqrt(2.0))
    return refit()


def _link_fast(moving: Table, used: set, config: Config, plane: TangentPlane) -> tuple[Table, list]:
    """Trails long enough to measure, not already in a slow tracklet, linked across exposures."""
    sc = config.streaks
    keep = (np.asarray(moving["kind"]) == "trail") & (np.asarray(moving["length"], float) >= sc.min_length)
    keep &= ~np.isin(np.arange(len(moving)), list(used))
    trails = moving[keep]
    if len(trails) < 2:
        return trails, []
    fast = link_streaks(
        np.asarray(trails["exposure"]), np.asarray(trails["t_hours"], float), np.asarray(trails["xi"], float),
        np.asarray(trails["eta"], float), np.asarray(trails["sigma"], float), np.asarray(trails["trail_arcsec"], float),
        np.asarray(trails["trail_pa"], float), np.asarray(trails["exptime"], float),
        flux=np.asarray(trails["flux"], float), whole=np.asarray(trails["cut"]) == 0, min_exposures=sc.min_exposures,
        rate_tol=sc.rate_tolerance, angle_tol=sc.angle_tolerance, max_chi2_dof=sc.max_chi2_dof,
    )
    taken: set[int] = set()
    kept = []
    for trk in fast:  # longest first; no trail in two objects
        if taken.isdisjoint(trk.members):
            kept.append(_restore_cut_centres(trails, trk, plane))
            taken.update(trk.members)
    # report order independent of float noise in the fits: by first exposure, then position
    t = np.asarray(trails["t_hours"], float)
    kept.sort(key=lambda trk: (round(float(t[trk.members[0]]), 6), round(trk.x0, 2), round(trk.y0, 2)))
    return trails, kept


def _streak_table(detections: Table, trails: Table, fast: list, names: list[str]) -> Table:
    """Every measured trail (linked to ``names[i]`` of ``fast[i]``, or single) plus satellites and bleeds."""
    member_of = {k: names[n] for n, trk in enumerate(fast) for k in trk.members}
    rows = [(row, "linked" if k in member_of else "single", member_of.get(k, "")) for k, row in enumerate(trails)]
    if len(detections):
        others = detections[np.isin(np.asarray(detections["kind"]), ["satellite", "bleed", "spike", "edge"])]
        rows += [(row, str(row["kind"]), "") for row in others]
    if not rows:
        return empty_table(STREAK_COLUMNS)
    out = []
    for row, status, name in rows:
        rate = float(row["trail_arcsec"]) / max(float(row["exptime"]), 1e-9) * 3600.0
        out.append((int(row["exposure"]), str(row["ccd"]), float(row["x"]), float(row["y"]), float(row["ra"]),
                    float(row["dec"]), float(row["length"]), float(row["trail_arcsec"]), float(row["trail_pa"]),
                    rate, float(row["mag"]), float(row["snr"]), status, name))
    table = Table(rows=out, names=[c[0] for c in STREAK_COLUMNS], dtype=[c[1] for c in STREAK_COLUMNS])
    return describe(table, STREAK_COLUMNS)


def _vet_trail_lengths(tracklets, slow: Table, min_detections: int, margin: float = 1.0) -> list:
    """Drop members (or whole slow tracklets) trailed far more than their motion allows.

    A mover at rate ``r`` draws ``r * exptime`` in an exposure; a member's measured trail may exceed
    that by ``margin`` [arcsec] or four times the members' median minor-axis rms, whichever is larger
    (short trails and seeing-limited blobs are measured coarsely).  Longer members are blends (a slow
    mover next to a star for part of a long sequence) whose footprint barycentre is biased: they are
    removed and the motion refitted when at least ``min_detections`` and a third of the members stay;
    otherwise the tracklet is dropped (a deblended galaxy or a string of blends).
    """
    trail = np.nan_to_num(np.asarray(slow["trail_arcsec"], float))
    exptime = np.asarray(slow["exptime"], float)
    # a blob's measured length is uncertain by a few PSF widths (seeing, blends): 4 minor-axis rms
    width = np.nan_to_num(np.asarray(slow["b"], float) * np.asarray(slow["pixel_scale"], float))
    t_h, xi, eta = (np.asarray(slow[c], float) for c in ("t_hours", "xi", "eta"))
    sigma = np.asarray(slow["sigma"], float)
    kept = []
    for trk in tracklets:
        idx = np.array(trk.members)
        slack = max(margin, 4.0 * float(np.median(width[idx])))
        ok = trail[idx] <= trk.rate * exptime[idx] / 3600.0 + slack
        if ok.all():
            kept.append(trk)
            continue
        if ok.sum() < max(min_detections, math.ceil(idx.size / 3.0)):
            log.debug("tracklet at (%.1f, %.1f) rejected: trails %.1f\" for %.1f\"/h", trk.x0, trk.y0,
                      float(np.median(trail[idx])), trk.rate)
            continue
        sub = idx[ok]
        p, c, chi2, t_ref = fit_linear_motion(t_h[sub], xi[sub], eta[sub], sigma[sub])
        log.debug("tracklet at (%.1f, %.1f): %d blended members removed", trk.x0, trk.y0, int((~ok).sum()))
        kept.append(Tracklet(tuple(int(k) for k in sub), p[0], p[1], p[2], p[3], c, chi2, 2 * sub.size - 4, t_ref))
    return kept


def _versions() -> dict:
    import astropy
    import numba
    import scipy
    import sep

    return {
        "ssodetect": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "astropy": astropy.__version__,
        "sep": sep.__version__,
        "numba": numba.__version__,
    }


class StageTimings(dict):
    """Wall time of each stage [s]; recording one also samples the process's peak memory so far (``peak_mb``)."""

    def __init__(self):
        super().__init__()
        self.peak_mb: dict[str, float] = {}

    def __setitem__(self, stage: str, seconds: float) -> None:
        super().__setitem__(stage, seconds)
        self.peak_mb[stage] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_pipeline(
    inputs, outdir: str | Path | None, config: Config | None = None, *, refcat: str | Path | None = None
) -> RunResult:
    """Run the slow-mover pipeline on a sequence of exposures.

    Parameters
    ----------
    inputs : iterable of path
        FITS files and/or directories.
    outdir : path or None
        Output directory; None runs without writing anything.
    config : Config, optional
        Defaults when None.
    refcat : path, optional
        Reference catalogue (Gaia DR3 column names, or SCAMP LDAC).  With
        ``[astrometry] enabled`` (default) every CCD exposure gets a fitted
        TAN+SIP WCS and zero point (``astrometry.ecsv``); otherwise the header
        WCS is only checked against it.

    Returns
    -------
    RunResult

    Raises
    ------
    SSODetectError
        Bad inputs or configuration (nothing is written).
    """
    config = config or Config()
    timings = StageTimings()
    t_run = time.perf_counter()
    stage = OutputStage(outdir) if outdir is not None else None
    handler = None
    package_log = logging.getLogger("ssodetect")
    saved_level = package_log.level
    if stage is not None:
        if package_log.getEffectiveLevel() > logging.INFO:
            package_log.setLevel(logging.INFO)  # run.log records the run's progress; restored below
        handler = logging.FileHandler(stage.file("run.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.DEBUG)
        logging.getLogger("ssodetect").addHandler(handler)
    try:
        result = _run(inputs, config, refcat, timings)
        timings["total"] = time.perf_counter() - t_run
        if stage is not None:
            _write_outputs(stage, result, config, inputs, refcat, timings)
            logging.getLogger("ssodetect").removeHandler(handler)
            handler.close()
            handler = None
            stage.commit()
            result.outdir = Path(outdir)
        result.timings = timings
        return result
    except BaseException:
        if stage is not None:
            stage.discard()
        raise
    finally:
        if handler is not None:
            package_log.removeHandler(handler)
            handler.close()
        package_log.setLevel(saved_level)


def _detect_and_solve(tasks, config: Config, reference: Table | None, timings: dict, masters: dict):
    """Per-CCD detection, then (with a reference catalogue) per-CCD astrometric solutions, on one executor."""
    solutions = []
    t0 = time.perf_counter()
    with make_executor(workers=config.execution.workers, scheduler=config.execution.scheduler) as executor:
        log.info("per-CCD detection on %s", executor.description)
        # a CCD without WCS is refused unless a later step can place it (blind solve or registration)
        placeable = config.astrometry.register_frames or (reference is not None and config.astrometry.blind)
        process = _Process(config, require_wcs=not placeable, masters=masters)
        results = executor.map(process, tasks, progress=config.execution.progress, desc="detect")
        timings["detect"] = time.perf_counter() - t0
        if reference is not None:
            t0 = time.perf_counter()
            groups = astrometry_tasks(results, tasks, config)
            solved = executor.map(SolveTask(reference, config), groups, progress=config.execution.progress, desc="astrometry")
            solutions = [sol for group in solved for sol in group]
            timings["astrometry"] = time.perf_counter() - t0
    return results, solutions


def _run(inputs, config: Config, refcat, timings) -> RunResult:
    t0 = time.perf_counter()
    paths = find_inputs(inputs)
    refs = scan_inputs(paths, config.io)
    refs, masters = build_calibration(refs, config)
    if not refs:
        raise InputError("no light frame among the inputs (only calibration frames)")
    exposures = group_exposures(refs, config.io, min_exposures=config.link.min_detections)
    reference = load_reference_catalogue(refcat) if refcat is not None else None
    orbits = load_orbits(config.known.orbits)  # a bad orbit file is refused before any processing
    if config.ml.enabled:
        from ssodetect.ml.model import load_model

        load_model(config.ml.model)  # so is a missing model file, or a missing PyTorch
    timings["ingest"] = time.perf_counter() - t0
    log.info(
        "%d files, %d exposures, %d CCD images", len(paths), len(exposures), sum(len(e.ccds) for e in exposures)
    )
    tasks = [ref for exp in exposures for ref in exp.ccds]
    calibrate = reference is not None and config.astrometry.enabled
    results, solutions = _detect_and_solve(tasks, config, reference if calibrate else None, timings, masters)
    ccd_info = [info for _, info in results]
    if calibrate:
        by_key = {(sol.exposure, sol.ccd): sol for sol in solutions}
        calibrated = []
        for (table, info), ref in zip(results, tasks):
            sol = by_key.get((ref.exposure, ref.ccd))
            calibrated.append(apply_solutions(table, sol, wcs_from_header_string(info.get("wcs_header", "")), config))
            if sol is not None:
                info["astrometry"] = {k: v for k, v in sol.row().items() if k not in ("exposure", "ccd")}
        failed = [s for s in solutions if not s.ok]
        if failed:
            action = "dropped" if config.astrometry.on_failure == "drop" else "kept with their header WCS"
            log.warning(
                "%d of %d CCD exposures not solved (detections %s): %s", len(failed), len(solutions), action,
                "; ".join(f"exposure {s.exposure} CCD {s.ccd}: {s.reason}" for s in failed[:5]),
            )
        ok = [s for s in solutions if s.ok]
        if ok:
            log.info(
                "astrometry: %d/%d CCD exposures solved, median rms %.1f mas, median %d stars",
                len(ok), len(solutions), 1e3 * float(np.median([max(s.rms_ra, s.rms_dec) for s in ok])),
                int(np.median([s.n_stars for s in ok])),
            )
    else:
        calibrated = [table for table, _ in results]
    tables = [t for t in register_unplaced(calibrated, tasks, ccd_info, config) if len(t)]
    # header WCS of every CCD exposure, kept out of provenance.json (cutouts and known objects use it)
    wcs_headers = {(int(info["exposure"]), str(info["ccd"])): info.pop("wcs_header", "") for info in ccd_info}
    detections = vstack(tables, metadata_conflicts="silent") if tables else empty_ccd_table()
    t0 = time.perf_counter()
    if reference is not None and not calibrate:
        for (table, info), ref in zip(results, tasks):
            if len(table) == 0:
                continue
            ref_ra, ref_dec = propagate(reference, exposures[ref.exposure].mid_time)
            pointlike = table[np.asarray(table["kind"]) == "point"]
            info["wcs_check"] = compare_with_reference(pointlike["ra"], pointlike["dec"], ref_ra, ref_dec)
        timings["wcs_check"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if len(detections):
        ra0, dec0 = float(np.median(detections["ra"])), float(np.median(detections["dec"]))
    else:
        ra0, dec0 = 0.0, 0.0
    plane = TangentPlane(ra0, dec0)
    t0_mjd = float(exposures[0].mid_time.mjd)
    cand = select_candidates(detections, config, plane, t0_mjd)
    moving = cand[~np.asarray(cand["static"]) & ~np.asarray(cand["artefact"]) & (np.asarray(cand["kind"]) != "extended")]
    timings["stationary"] = time.perf_counter() - t0
    log.info(
        "%d detections, %d usable, %d static, %d detector artefacts, %d moving candidates",
        len(detections), len(cand), int(np.sum(cand["static"])), int(np.sum(cand["artefact"])), len(moving),
    )
    t0 = time.perf_counter()
    lk = config.link
    # trails longer than the fastest slow motion can draw are for the streak linking only; the
    # measured length of a short blob (a blend, a seeing-elongated source) is uncertain by a few PSF widths
    reach = 1.5 * lk.max_rate * np.asarray(moving["exptime"], float) / 3600.0 + np.maximum(
        0.5, 4.0 * np.asarray(moving["b"], float) * np.asarray(moving["pixel_scale"], float))
    slow_idx = np.nonzero(~((np.asarray(moving["kind"]) == "trail") & (np.nan_to_num(np.asarray(moving["trail_arcsec"], float)) > reach))
                          & (np.asarray(moving["snr"], float) >= lk.min_snr))[0]
    slow = moving[slow_idx]
    tracklets = link_tracklets(
        np.asarray(slow["exposure"]), np.asarray(slow["t_hours"]), np.asarray(slow["xi"]),
        np.asarray(slow["eta"]), np.asarray(slow["sigma"]), np.asarray(slow["flux"]),
        np.asarray(slow["flux_err"]),
        min_rate=lk.min_rate, max_rate=lk.max_rate, min_detections=lk.min_detections, match_sigma=lk.match_sigma,
        match_floor=lk.match_floor, max_chi2_dof=lk.max_chi2_dof, max_flux_ratio=lk.max_flux_ratio,
        min_rate_significance=lk.min_rate_significance, min_fraction=lk.min_fraction,
    )
    tracklets = _vet_occupancy(tracklets, slow, cand, exposures, config)
    tracklets = _vet_trail_lengths(tracklets, slow, lk.min_detections)
    snr = np.asarray(slow["snr"], float)
    tracklets = [t for t in tracklets if math.sqrt(float(np.sum(snr[list(t.members)] ** 2))) >= lk.min_total_snr]
    observations, objects = tracklet_tables(slow, tracklets, plane, t0_mjd=t0_mjd)
    timings["link"] = time.perf_counter() - t0
    log.info("%d slow movers linked", len(objects))
    streak_table = empty_table(STREAK_COLUMNS)
    if config.streaks.enabled:
        t0 = time.perf_counter()
        used = {int(slow_idx[k]) for trk in tracklets for k in trk.members}
        trails, fast = _link_fast(moving, used, config, plane)
        fast_obs, fast_obj = tracklet_tables(trails, fast, plane, t0_mjd=t0_mjd, kind="streak",
                                             first_number=len(objects) + 1)
        observations = vstack([observations, fast_obs]) if len(fast_obs) else observations
        objects = vstack([objects, fast_obj]) if len(fast_obj) else objects
        streak_table = _streak_table(detections, trails, fast, [str(n) for n in fast_obj["object"]])
        timings["streaks"] = time.perf_counter() - t0
        log.info("%d fast movers linked from %d trails; %d single-exposure trails and %d satellites flagged",
                 len(fast_obj), len(trails), int(np.sum(streak_table["status"] == "single")),
                 int(np.sum(streak_table["status"] == "satellite")))
    astrometry = solution_table(solutions) if calibrate else None
    result = RunResult(
        observations=observations, objects=objects, candidates=moving, astrometry=astrometry, ccd_info=ccd_info,
        streaks=streak_table, exposures=exposures, masters=masters, wcs_headers=wcs_headers,
    )
    if config.stack.enabled:
        result.observations, result.objects = stack_objects(
            result.observations, result.objects, exposures, ccd_info, _wcs_lookup(result),
            lambda ref: subtracted_image(ref, config, masters.get(ref.ccd), with_noise=True), config, timings,
        )
        observations, objects = result.observations, result.objects
    if config.ml.enabled:
        result.observations, result.objects, result.vetting = vet_objects(
            result.observations, result.objects, exposures, ccd_info, _wcs_lookup(result),
            lambda ref: subtracted_image(ref, config, masters.get(ref.ccd), with_noise=True), config, timings,
        )
        observations, objects = result.observations, result.objects
    if config.known.orbits or config.known.skybot:
        t0 = time.perf_counter()
        known, predictions = identify_known(observations, objects, exposures, ccd_info, _wcs_lookup(result), orbits,
                                            config)
        result.observations, result.objects = recover_known(
            observations, objects, known, predictions, exposures, ccd_info, _wcs_lookup(result),
            lambda ref: subtracted_image(ref, config, masters.get(ref.ccd), with_noise=True), config,
        )
        result.known = known
        timings["known"] = time.perf_counter() - t0
    return result


def _write_outputs(stage: OutputStage, result: RunResult, config: Config, inputs, refcat, timings) -> None:
    result.observations.write(stage.file("observations.ecsv"), format="ascii.ecsv")
    result.objects.write(stage.file("objects.ecsv"), format="ascii.ecsv")
    if result.astrometry is not None:
        result.astrometry.write(stage.file("astrometry.ecsv"), format="ascii.ecsv")
    if result.streaks is not None:
        result.streaks.write(stage.file("streaks.ecsv"), format="ascii.ecsv")
    if result.known is not None:
        result.known.write(stage.file("known.ecsv"), format="ascii.ecsv")
    if result.vetting is not None:
        result.vetting.write(stage.file("vetting.ecsv"), format="ascii.ecsv")
    stage.file("config.toml").write_text(dump_toml(config))
    context = _report_context(result, config)
    if config.report.cutouts and result.exposures:
        cutouts, overview = extract_cutouts(
            result.observations, result.exposures,
            lambda ref: subtracted_image(ref, config, result.masters.get(ref.ccd)),
            size=config.report.cutout_size, wcs_for=_wcs_lookup(result),
        )
        cutouts.writeto(stage.file("cutouts.fits"))
        overview.writeto(stage.file("overview.fits"))
    provenance = {
        "software": _versions(),
        "inputs": [str(p) for p in inputs],
        "refcat": str(refcat) if refcat else None,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "peak_rss_mb": {k: round(v, 1) for k, v in getattr(timings, "peak_mb", {}).items()},
        "n_objects": len(result.objects),
        "n_observations": len(result.observations),
        "ccds": [_jsonable(info) for info in result.ccd_info],
        "report_context": _jsonable(context),
    }
    stage.file("provenance.json").write_text(json.dumps(provenance, indent=2))
    write_reports(stage.path, stage.path, config, title=f"ssodetect run: {stage.outdir.resolve().name}")


def _wcs_lookup(result: RunResult):
    """(exposure, ccd) -> the WCS positions went through: fitted, else the header's (None without)."""
    texts = dict(result.wcs_headers)
    if result.astrometry is not None:
        for row in result.astrometry:
            if str(row["status"]) == "ok" and str(row["wcs_header"]):
                texts[(int(row["exposure"]), str(row["ccd"]))] = str(row["wcs_header"])

    def lookup(exposure, ccd):
        text = texts.get((int(exposure), str(ccd)), "")
        return wcs_from_header_string(text) if text else None

    return lookup


def _report_context(result: RunResult, config: Config) -> dict:
    """What the reports need beyond the tables: observatory code, band, filter, seeing [arcsec] and
    spacecraft position [km] per exposure, pixel scale [arcsec/px], detector format."""
    context: dict = {"station": config.report.station, "band": "", "filter": "", "seeing": {}, "positions": {}}
    refs = [r for e in result.exposures for r in e.ccds]
    if refs:
        from astropy.io import fits

        header = fits.getheader(refs[0].path, refs[0].sci)
        context["filter"] = refs[0].filter
        context["band"] = str(refs[0].filter).strip()
        code = station_code(header) or station_code(fits.getheader(refs[0].path, 0))
        if config.report.station == "XXX" and code:
            log.info("observatory code %s from the header of %s", code, refs[0].path)
            context["station"] = code
    fixed = tuple(config.report.observer_position) or None
    for e in result.exposures:
        position = next((r.observer for r in e.ccds if r.observer is not None), fixed)
        if position is not None:
            context["positions"][e.index] = list(position)
    cand = result.candidates
    scale = float(np.nanmedian(np.asarray(cand["pixel_scale"], float))) if cand is not None and len(cand) else float("nan")
    if np.isfinite(scale):
        context["pixel_scale"] = scale
    fwhm: dict = {}
    for info in result.ccd_info:
        if info.get("psf_sigma") and np.isfinite(scale):
            fwhm.setdefault(int(info["exposure"]), []).append(2.3548 * float(info["psf_sigma"]) * scale)
    context["seeing"] = {k: float(np.median(v)) for k, v in fwhm.items()}
    shapes = {tuple(info["shape"]) for info in result.ccd_info if info.get("shape")}
    if len(shapes) == 1:
        ny, nx = shapes.pop()
        context["array_size"] = f"{nx}x{ny}"
    return context


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    return obj


def run_astrometry(
    inputs, outdir: str | Path, refcat: str | Path, config: Config | None = None, *, formats=("head",)
) -> Table:
    """Solve every CCD exposure against a reference catalogue and write refined headers.

    Parameters
    ----------
    inputs : iterable of path
        FITS files and/or directories (never modified).
    outdir : path
        Output directory: ``astrometry.ecsv`` (one row per CCD exposure),
        ``config.toml``, ``provenance.json`` and, per input file, ``<name>.head``
        (SCAMP-style: one block of WCS cards ending in ``END`` per science
        extension, in file order) and/or ``<name>.fits`` (a copy whose science
        headers carry the fitted WCS and zero point).
    refcat : path
        Reference catalogue (Gaia DR3 columns, or SCAMP LDAC).
    config : Config, optional
    formats : sequence of {"head", "fits"}

    Returns
    -------
    Table
        The solutions (``astrometry.ecsv``).
    """
    config = config or Config()
    unknown = set(formats) - {"head", "fits"}
    if unknown:
        raise ConfigError(f"unknown header output format(s): {', '.join(sorted(unknown))}")
    timings: dict[str, float] = {}
    t_run = time.perf_counter()
    paths = find_inputs(inputs)
    refs, masters = build_calibration(scan_inputs(paths, config.io), config)
    reference = load_reference_catalogue(refcat)
    exposures = group_exposures(refs, config.io, min_exposures=1)
    tasks = [ref for exp in exposures for ref in exp.ccds]
    results, solutions = _detect_and_solve(tasks, config, reference, timings, masters)
    table = solution_table(solutions)
    by_key = {(s.exposure, s.ccd): s for s in solutions}
    with OutputStage(outdir) as stage:
        for path in sorted({ref.path for ref in tasks}):
            mine = sorted((ref for ref in tasks if ref.path == path), key=lambda r: r.sci)
            sols = [(ref, by_key.get((ref.exposure, ref.ccd))) for ref in mine]
            write_refined_headers(Path(path), sols, stage, formats)
        table.write(stage.file("astrometry.ecsv"), format="ascii.ecsv")
        stage.file("config.toml").write_text(dump_toml(config))
        timings["total"] = time.perf_counter() - t_run
        provenance = {
            "software": _versions(),
            "inputs": [str(p) for p in inputs],
            "refcat": str(refcat),
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "peak_rss_mb": {k: round(v, 1) for k, v in getattr(timings, "peak_mb", {}).items()},
            "n_solved": int(sum(s.ok for s in solutions)),
            "n_failed": int(sum(not s.ok for s in solutions)),
        }
        stage.file("provenance.json").write_text(json.dumps(provenance, indent=2))
    return table


def resolve_refcat(refcat, inputs, config: Config):
    """The reference catalogue file to use: ``refcat`` itself, or for ``"gaia"`` a cached Gaia DR3 cone.

    The cone covers every CCD's header footprint plus ``max_pointing_error``;
    the archive is queried once (astroquery, network) and then read from
    ``[astrometry] gaia_cache``.
    """
    if refcat is None or str(refcat).lower() != "gaia":
        return refcat
    from ssodetect.astrometry.gaia import fetch_gaia
    from ssodetect.io import read_ccd

    ras, decs = [], []
    for ref in scan_inputs(find_inputs(inputs), config.io):
        image = read_ccd(ref, config.io)
        if image.wcs is None:
            continue
        ny, nx = image.data.shape
        ra, dec = image.wcs.all_pix2world([0, nx - 1, 0, nx - 1], [0, 0, ny - 1, ny - 1], 0)
        ras.extend(ra)
        decs.extend(dec)
    if not ras:
        raise ConfigError("--refcat gaia needs at least one header WCS to know where to query")
    plane = TangentPlane(float(np.median(ras)), float(np.median(decs)))
    x, y = plane.to_plane(np.array(ras), np.array(decs))
    radius = (float(np.max(np.hypot(x, y))) + config.astrometry.max_pointing_error) / 3600.0
    return fetch_gaia(plane.ra0, plane.dec0, radius, cache_dir=Path(config.astrometry.gaia_cache).expanduser(),
                      mag_limit=config.astrometry.gaia_mag_limit)
