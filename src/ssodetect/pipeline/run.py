"""End-to-end run: ingest -> per-CCD detection -> astrometry -> stationary removal -> linking -> outputs.

:func:`run_pipeline` is the Python API behind ``ssodetect run``.  Every product
is staged and moved into the output directory only when the run succeeds, so a
failed run leaves nothing half-written.
"""
from __future__ import annotations

import json
import logging
import re
import os
import platform
import resource
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Mapping
from typing import Callable

import numpy as np
from astropy.table import Table, vstack
from pydantic import ValidationError

from ssodetect._version import __version__
from ssodetect.astrometry.field import recheck_outliers
from ssodetect.astrometry.refcat import compare_with_reference, cut_to_field, load_reference_catalogue, propagate
from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.config import BAND_CHARACTERS, Config, dump_toml, validation_problems
from ssodetect.calibrate import build_calibration
from ssodetect.detect import kernels_cold
from ssodetect.errors import ConfigError, InputError, PrintableFormatter, RepeatFilter, WarningCount
from ssodetect.io import (
    OutputStage, check_apart, check_free_space, find_inputs, group_exposures, header_centres, scan_inputs,
    sequence_problems, time_order_differs,
)
from ssodetect.io.frames import check_path_names, check_regular_file
from ssodetect.io.outputs import STAGE_MARKER, record_files, sha256_file
from ssodetect.profiles import resolve_profile
from ssodetect.io.headers import station_code, telescope_aperture
from ssodetect.columns import empty_table
from ssodetect.link.blends import MAX_TRAIL_SEARCH
from ssodetect.link.movers import STREAK_COLUMNS, link_movers, select_candidates, streak_table
from ssodetect.pipeline.astrometry import (
    SolveTask,
    warn_unsolved,
    load_reference_wcs,
    apply_solutions,
    astrometry_tasks,
    record_star_trails,
    warn_doubtful_zeropoints,
    warn_outliers,
    warn_tracking,
    star_trail_summary,
    align_header_wcs,
    register_unplaced,
    solution_table,
    wcs_from_header_string,
    write_refined_headers,
    check_header_stems,
)
from ssodetect.pipeline.blends import claim_trails, recover_blends
from ssodetect.pipeline.ccd import calibrated_image, empty_ccd_table, process_ccd, subtracted_image
from ssodetect.pipeline.known import identify_known, load_orbits, recover_known
from ssodetect.pipeline.ml import vet_objects
from ssodetect.pipeline.stack import stack_objects
from ssodetect.pipeline.occupancy import occupancy_vet, release_trails
from ssodetect.pipeline.executor import make_executor, require_extras
from ssodetect.pipeline.steps import Step, StepCache, cache_key_path, config_slice, pipeline_steps, step_key
from ssodetect.report.alerts import deliver_alert, write_alert
from ssodetect.report import tracklet_tables
from ssodetect.report.cutouts import extract_cutouts
from ssodetect.report.context import ccd_limits, field_centre
from ssodetect.report.products import write_reports
from ssodetect.report.regions import REGIONS_DIR, write_exposure_regions

__all__ = ["RunResult", "StepContext", "BUILTIN_STEPS", "run_pipeline", "run_astrometry", "select_candidates",
           "resolve_refcat", "wcs_lookup", "run_result", "observation_id", "PRODUCTS", "STREAK_COLUMNS",
           "check_named_files", "named_files"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run produced (also written to the output directory).

    Tables of steps that did not run (``--to-step``) are None.  ``steps`` holds one record per step
    (``status`` run | cached | off | not run, ``seconds``, ``key``); ``warnings`` counts the warnings
    logged during the run; ``alert_delivered`` is None when there was nothing to deliver.
    """

    observations: Table | None
    objects: Table | None
    candidates: Table | None
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
    link_stats: dict = field(default_factory=dict)
    obs_id: str = ""
    run_id: str = ""
    steps: list = field(default_factory=list)
    warnings: int = 0
    profile: dict = field(default_factory=dict)
    alert_delivered: bool | None = None


class _Process:
    """Picklable per-CCD task bound to a configuration."""

    def __init__(self, config: Config, require_wcs: bool = True, masters: dict | None = None, keep: Path | None = None):
        self.config = config
        self.require_wcs = require_wcs
        self.masters = masters or {}
        self.keep = keep

    def __call__(self, ref):
        return process_ccd(ref, self.config, require_wcs=self.require_wcs, calibration=self.masters.get(ref.ccd),
                           keep=self.keep)


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


@dataclass
class StepContext:
    """What steps share besides products: the run's inputs, executor, staging area and timings.

    Attributes
    ----------
    inputs : list
        Paths named on the command line (files and/or directories).
    refcat : path or None
        Reference catalogue.
    config : Config
    timings : StageTimings
        Sub-stage wall times [s] (steps add their own entries).
    stage : OutputStage or None
        Where products are written (None: a run without output).
    run_id, obs_id : str
        Identifiers of the run (a new UUID each run) and of the observation (the --obs-id option; the
        ingest step's header value otherwise).
    """

    inputs: list
    refcat: str | Path | None
    config: Config
    timings: StageTimings
    stage: OutputStage | None = None
    run_id: str = ""
    obs_id: str = ""
    _executor: object = None
    _exit: object = None

    def executor(self):
        """The run's executor (serial or Dask), started on first use and shared by the steps."""
        if self._executor is None:
            manager = make_executor(workers=self.config.execution.workers, scheduler=self.config.execution.scheduler)
            self._executor = manager.__enter__()
            self._exit = manager.__exit__
            log.info("per-CCD work on %s", self._executor.description)
        return self._executor

    def close(self) -> None:
        if self._exit is not None:
            self._exit(None, None, None)
            self._executor = self._exit = None

    def intermediate(self, step: str) -> Path | None:
        """Directory for ``step``'s intermediate products (created), None unless ``[intermediate] keep``."""
        if self.stage is None or not self.config.intermediate.keep:
            return None
        folder = self.stage.path / "intermediate" / step
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def _detect(tasks, config: Config, masters: dict, reference, executor, keep: Path | None = None) -> list:
    """Per-CCD detection of every CCD image on ``executor``: list of (detections, info)."""
    # a CCD without WCS is refused unless a later step can place it (blind solve or registration)
    placeable = config.astrometry.register_frames or (reference is not None and config.astrometry.blind)
    process = _Process(config, require_wcs=not placeable, masters=masters, keep=keep)
    return executor.map(process, tasks, progress=config.execution.progress, desc="detect")


def _solve(results, tasks, reference: Table, config: Config, executor) -> list:
    """Per-CCD-exposure astrometric solutions against ``reference``: each CCD on its own (on the executor), then
    the failures from their CCD's other exposures and their exposure's other CCDs."""
    groups = astrometry_tasks(results, tasks, config)
    solved = executor.map(SolveTask(reference, config), groups, progress=config.execution.progress, desc="astrometry")
    solutions, doubted = recheck_outliers(groups, [sol for group in solved for sol in group], reference,
                                          config.astrometry)
    warn_outliers(doubted, {(ref.exposure, ref.ccd): ref.path for ref in tasks})
    warn_unsolved(solutions, {(ref.exposure, ref.ccd): ref.path for ref in tasks})
    record_star_trails(solutions, {(ref.exposure, ref.ccd): info.get("star_trail")
                                   for (_, info), ref in zip(results, tasks)})
    return solutions


def _tasks(products: dict) -> list:
    return [ref for exp in products["exposures"] for ref in exp.ccds]


#: Reference stars farther than this [deg] beyond every CCD's header footprint are dropped when the catalogue
#: is read (a header off by more is beyond what the blind search near it reaches, see blind_max_tiles).
REFCAT_MARGIN = 0.5


def step_ingest(products: dict, config: Config, ctx: StepContext) -> dict:
    """Scan the inputs, group exposures, build calibration masters, read the reference catalogue and orbits."""
    paths = find_inputs(ctx.inputs)
    refs = scan_inputs(paths, config.io)
    refs, masters = build_calibration(refs, config)
    if not refs:
        raise InputError("no light frame among the inputs (only calibration frames)")
    exposures = group_exposures(refs, config.io, min_exposures=config.link.min_detections)
    for problem in sequence_problems(exposures):
        log.warning("%s", problem)
    reference = load_reference_catalogue(ctx.refcat) if ctx.refcat is not None else None
    field = header_centres(refs) if reference is not None and not config.astrometry.blind_pointing else None
    if field is not None:
        radius = field[2] + REFCAT_MARGIN
        before = len(reference)
        reference = cut_to_field(reference, field[0], field[1], radius)
        if before and not len(reference):
            log.warning("%s: none of the reference catalogue's %d stars lies within %.2f deg of the CCDs' header "
                        "centres (it covers another part of the sky, or the headers do)", ctx.refcat, before, radius)
        elif len(reference) < before:
            log.info("reference catalogue: %d of %d stars within %.2f deg of the CCDs' header centres kept (the "
                     "headers' half-diagonal + %.1f deg)", len(reference), before, radius, REFCAT_MARGIN)
    orbits = load_orbits(config.known.orbits)  # a bad orbit file is refused before any processing
    if config.astrometry.reference_wcs:
        load_reference_wcs(config.astrometry.reference_wcs)  # so is an unreadable reference WCS
    if config.ml.enabled:
        from ssodetect.ml.model import load_model

        load_model(config.ml.model)  # so is a missing model file, or a missing PyTorch
    log.info("%d files, %d exposures, %d CCD images", len(paths), len(exposures), sum(len(e.ccds) for e in exposures))
    return {"exposures": exposures, "masters": masters, "reference": reference, "orbits": orbits,
            "obs_id": observation_id(exposures, config)}


def observation_id(exposures, config: Config) -> str:
    """The observation / field identifier from the first exposure's headers (``[io] obs_id_keys``), or ""."""
    from astropy.io import fits

    ref = exposures[0].ccds[0]
    for hdu in dict.fromkeys((0, ref.sci)):
        header = fits.getheader(ref.path, hdu)
        for key in config.io.obs_id_keys:
            value = str(header.get(key, "")).strip()
            if value:
                return value
    return ""


def step_detect(products: dict, config: Config, ctx: StepContext) -> dict:
    """Per CCD image: calibrate, clean, background, extract, measure, refine trails, project to the sky."""
    tasks = _tasks(products)
    if kernels_cold():
        log.info("first run on this installation: compiling the numeric kernels (numba) takes ~40 s, once")
    return {"ccd_results": _detect(tasks, config, products["masters"], products["reference"], ctx.executor(),
                                   ctx.intermediate("detect"))}


def _warn_unsolved_summary(solutions: list, tasks: list, ccd_info: list, placed_wcs: dict, config: Config) -> None:
    """One warning for the CCD exposures left unsolved: how many kept their detections (through the header WCS or a
    registration onto the others) and which were left out, with their files."""
    failed = [s for s in solutions if not s.ok]
    if not failed:
        return
    files = {(ref.exposure, ref.ccd): ref.path for ref in tasks}
    registered = {(ref.exposure, ref.ccd) for ref, info in zip(tasks, ccd_info)
                  if (info.get("registration") or {}).get("status") == "ok"}
    lost = {(s.exposure, s.ccd) for s in failed if config.astrometry.on_failure == "drop"
            or (placed_wcs.get((s.exposure, s.ccd)) is None and (s.exposure, s.ccd) not in registered)}
    kept = len(failed) - len(lost)
    action = ", ".join(part for part in (f"{kept} kept with their header WCS or registered" if kept else "",
                                         f"{len(lost)} left out" if lost else "") if part)
    log.warning("%d of %d CCD exposures not solved (detections: %s): %s", len(failed), len(solutions), action,
                "; ".join(f"exposure {s.exposure} CCD {s.ccd} ({files.get((s.exposure, s.ccd), '?')}"
                          f"{', left out' if (s.exposure, s.ccd) in lost else ''}): {s.reason}" for s in failed[:5]))


def step_astrometry(products: dict, config: Config, ctx: StepContext) -> dict:
    """Fit every CCD exposure's WCS and zero point against the reference catalogue (or register frames without
    WCS to each other); gather the field's detections on the sky."""
    timings = ctx.timings
    results, tasks, exposures = products["ccd_results"], _tasks(products), products["exposures"]
    reference = products["reference"]
    calibrate = reference is not None and config.astrometry.enabled
    ccd_info = [dict(info) for _, info in results]
    said = star_trail_summary(ccd_info)
    if said:
        log.info(said)
    warn_tracking(ccd_info, tasks)
    solutions = _solve(results, tasks, reference, config, ctx.executor()) if calibrate and results else []
    # the WCS each CCD exposure's sky positions go through (frames without one are registered onto these)
    placed_wcs = {(ref.exposure, ref.ccd): wcs_from_header_string(info.get("wcs_header", ""))
                  for info, ref in zip(ccd_info, tasks)}
    if calibrate:
        by_key = {(sol.exposure, sol.ccd): sol for sol in solutions}
        calibrated = []
        for (table, _), info, ref in zip(results, ccd_info, tasks):
            sol = by_key.get((ref.exposure, ref.ccd))
            calibrated.append(apply_solutions(table, sol, placed_wcs[(ref.exposure, ref.ccd)], config))
            if sol is not None:
                info["astrometry"] = {k: v for k, v in sol.row().items() if k not in ("exposure", "ccd")}
                if sol.ok:
                    placed_wcs[(ref.exposure, ref.ccd)] = sol.wcs
                elif config.astrometry.on_failure == "drop":
                    placed_wcs[(ref.exposure, ref.ccd)] = None
        # a header WCS that is there but broken is the frame's defect even when the catalogue rescued it; one that is
        # simply absent is no news in a raw night, but is where the run's other frames have one (campaign 33: a frame
        # stripped of its WCS was solved blind and registered without a word)
        with_wcs = sum(not info.get("wcs_problem") for info in ccd_info)
        broken = [(ref, info["wcs_problem"]) for info, ref in zip(ccd_info, tasks)
                  if info.get("wcs_problem")
                  and (with_wcs or not str(info["wcs_problem"]).startswith("no celestial WCS"))
                  and (by_key.get((ref.exposure, ref.ccd)) is not None and by_key[(ref.exposure, ref.ccd)].ok)]
        if broken:
            log.warning("%d CCD exposure(s) with an unusable header WCS solved blind against the reference catalogue: "
                        "%s", len(broken), "; ".join(f"{ref.path} CCD {ref.ccd} ({why})" for ref, why in broken[:3])
                        + (f"; and {len(broken) - 3} more" if len(broken) > 3 else ""))
        calibrated = align_header_wcs(calibrated, tasks, ccd_info, config, placed_wcs)
        failed = [s for s in solutions if not s.ok]
        uncovered = [s for s in failed if str(s.reason).startswith("only 0 reference stars")]
        if solutions and len(uncovered) == len(solutions) and len(reference):  # (an empty one was said at ingest)
            log.warning("%s: the reference catalogue has no star near any CCD's header footprint (it covers another "
                        "part of the sky, or the headers do); the run goes on without astrometry", ctx.refcat)

        ok = [s for s in solutions if s.ok]
        if ok:
            methods = {m: sum(s.method == m for s in ok) for m in dict.fromkeys(s.method for s in ok)}
            fitted = [s for s in ok if s.n_stars > 0 and np.isfinite(s.rms_ra)]
            log.info(
                "astrometry: %d/%d CCD exposures solved (%s), median rms %.1f mas, median %d stars",
                len(ok), len(solutions), ", ".join(f"{n} {m}" for m, n in methods.items()),
                1e3 * float(np.median([max(s.rms_ra, s.rms_dec) for s in fitted])) if fitted else float("nan"),
                int(np.median([s.n_stars for s in fitted])) if fitted else 0,
            )
        keep = ctx.intermediate("astrometry")
        if keep is not None:
            for path in sorted({ref.path for ref in tasks}):
                mine = sorted((ref for ref in tasks if ref.path == path), key=lambda r: r.sci)
                write_refined_headers(Path(path), [(ref, by_key.get((ref.exposure, ref.ccd))) for ref in mine],
                                      _Folder(keep), ("head",))
    else:
        calibrated = align_header_wcs([table for table, _ in results], tasks, ccd_info, config, placed_wcs)
    tables = [t for t in register_unplaced(calibrated, tasks, ccd_info, config, placed_wcs) if len(t)]
    if calibrate:
        _warn_unsolved_summary(solutions, tasks, ccd_info, placed_wcs, config)
        warn_doubtful_zeropoints(solutions, tasks, ccd_info)
    # header WCS of every CCD exposure, kept out of provenance.json (cutouts and known objects use it)
    wcs_headers = {(int(info["exposure"]), str(info["ccd"])): info.pop("wcs_header", "") for info in ccd_info}
    detections = vstack(tables, metadata_conflicts="silent") if tables else empty_ccd_table()
    if reference is not None and not calibrate:
        t0 = time.perf_counter()
        for (table, _), info, ref in zip(results, ccd_info, tasks):
            if len(table) == 0:
                continue
            ref_ra, ref_dec = propagate(reference, exposures[ref.exposure].mid_time)
            pointlike = table[np.asarray(table["kind"]) == "point"]
            info["wcs_check"] = compare_with_reference(pointlike["ra"], pointlike["dec"], ref_ra, ref_dec)
        timings["wcs_check"] = time.perf_counter() - t0
    return {"detections": detections, "ccd_info": ccd_info, "astrometry": solution_table(solutions) if calibrate else None,
            "wcs_headers": wcs_headers}


class _Folder:
    """A directory offering ``file(name)`` like an :class:`OutputStage`."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name


def step_link(products: dict, config: Config, ctx: StepContext) -> dict:
    """Remove static sources and detector artefacts, link slow movers, link trails of fast movers."""
    t0 = time.perf_counter()
    detections, exposures = products["detections"], products["exposures"]
    # a space-based observer's positions (every exposure's, or none): the parallax of slow movers' motions
    observers = {e.index: next((r.observer for r in e.ccds if r.observer is not None), None) for e in exposures}
    observers = observers if all(o is not None for o in observers.values()) else None
    links = link_movers(detections, {e.index: float(e.mid_time.mjd) for e in exposures}, config, observers)
    st = links.stats
    log.info("%d detections, %d usable (%d point sources among them with their flux error widened for a masked "
             "core), %d static (%d more matched in enough exposures but kept for their significant motion), "
             "%d detector artefacts, %d moving candidates", st["n_detections"], st["n_usable"],
             st["n_core_masked_flux"], st["n_static"], st["n_moving_matches"], st["n_artefact"], st["n_moving"])
    slow = st["slow"]
    log.info("slow movers: %d seeds tried, %.3g chance detections expected within their predictions, %d linked; "
             "%d refused as chance alignments (chance probability above %.2g: %g expected chance tracklets accepted "
             "at most)", slow["n_seeds"], slow["expected_chance"], slow["n_tracklets"], slow["n_rejected_false_alarm"],
             slow["chance_threshold"] or float("nan"), slow["false_alarm_budget"])
    observations, objects = tracklet_tables(links.slow, links.slow_tracklets, links.plane, t0_mjd=links.t0_mjd)
    streaks = empty_table(STREAK_COLUMNS)
    if config.streaks.enabled:
        fast_obs, fast_obj = tracklet_tables(links.trails, links.fast_tracklets, links.plane, t0_mjd=links.t0_mjd,
                                             kind="streak", first_number=len(objects) + 1)
        observations = vstack([observations, fast_obs]) if len(fast_obs) else observations
        objects = vstack([objects, fast_obj]) if len(fast_obj) else objects
        streaks = streak_table(detections, links.trails, links.fast_tracklets, [str(n) for n in fast_obj["object"]])
        fast = st["fast"]
        log.info("fast movers: %d trails, %d consistent pairs, %d hypotheses, %d linked (%d trails); %d trails in no "
                 "chain (single), %d satellites flagged", fast["n_trails"], fast["n_pairs"], fast["n_hypotheses"],
                 fast["n_chains"], fast["n_linked"], fast["n_unlinked"], int(np.sum(streaks["status"] == "satellite")))
    if links.doubtful_tracklets:
        # refused as possible chance alignments by a small margin: the occupancy step confirms them on the pixels
        # where they should have been seen and were not detected, or drops them
        doubt_obs, doubt_obj = tracklet_tables(links.slow, links.doubtful_tracklets, links.plane, t0_mjd=links.t0_mjd,
                                               kind="doubtful", first_number=len(objects) + 1)
        observations = vstack([observations, doubt_obs]) if len(observations) else doubt_obs
        objects = vstack([objects, doubt_obj]) if len(objects) else doubt_obj
        log.info("slow movers: %d tracklets refused as possible chance alignments by at most %g times kept for a "
                 "check on the pixels of the exposures that missed them (%d seen in every exposure and %d failing the "
                 "catalogue checks dropped)", len(links.doubtful_tracklets), config.link.confirm_max_excess,
                 slow["n_doubtful_seen_everywhere"], slow["n_doubtful_vetted"])
    ctx.timings["link"] = time.perf_counter() - t0
    return {"candidates": links.moving, "observations": observations, "objects": objects, "streaks": streaks,
            "link_stats": st}


def step_blends(products: dict, config: Config, ctx: StepContext) -> dict:
    """Measure pairs of clean detections, and single whole trails, in the exposures where a brighter source or a
    spike hides their mover (pixels); the trails that became objects are marked linked in ``streaks``."""
    t0 = time.perf_counter()
    observations, objects, stats = recover_blends(
        products["detections"], products["candidates"], products["observations"], products["objects"],
        products["exposures"], products["ccd_info"], wcs_lookup(products), products["masters"], config,
    )
    log.info("blends: %d pairs of clean detections, %d predicted onto brighter sources in %d exposures, %d measured "
             "(%d accepted; refused: %s, of which %d faint by their best signal-to-noise ratio without the full fit; %d without a template, %d off the image, %d longer than streaks.max_length "
             "or 2000 px), %d objects found "
             "(%d pairs with too few measurements kept, %d whose measurements do not line up, %d sharing a detection); "
             "%d whole single trails predicted both ways (%d without fitted errors; %d predictions searched for "
             "light within %g px only, their reach being wider), %d directions whose predictions show too little "
             "light not measured, %d objects from whole trails",
             stats["n_pairs"], stats["n_proposals"], stats["n_targets"], stats["n_measured"], stats["n_accepted"],
             ", ".join(f"{k} {v}" for k, v in sorted(stats["refused"].items())) or "none", stats["n_prescreened"],
             stats["n_no_template"],
             stats["n_off_image"], stats["n_too_long"], stats["n_objects"], stats["n_too_few"], stats["n_rejected_fit"],
             stats["n_conflicts"], stats["trails"]["n_pool"], stats["trails"]["n_unfitted"],
             stats["trails"]["n_search_capped"], MAX_TRAIL_SEARCH, stats["trails"]["n_unsupported"],
             stats["n_objects_from_trails"])
    ctx.timings["blends"] = time.perf_counter() - t0
    before = set(np.asarray(products["objects"]["object"]).astype(str)) if len(products["objects"]) else set()
    found = objects[~np.isin(np.asarray(objects["object"]).astype(str), list(before))] if len(objects) else objects
    streaks = claim_trails(products["streaks"], observations, found)
    # the single trails that became members of the objects found here (link.fast counted them unlinked)
    stats["n_trails_claimed"] = int(np.sum(np.asarray(streaks["status"]).astype(str) == "linked")
                                    - np.sum(np.asarray(products["streaks"]["status"]).astype(str) == "linked")
                                    ) if len(streaks) else 0
    return {"observations": observations, "objects": objects, "streaks": streaks,
            "link_stats": {**products.get("link_stats", {}), "blends": stats}}


def step_occupancy(products: dict, config: Config, ctx: StepContext) -> dict:
    """Measure each slow mover's template flux at its positions after it moved on; remove the static sources."""
    t0 = time.perf_counter()
    observations, objects, stats = occupancy_vet(
        products["observations"], products["objects"], products["exposures"], products["ccd_info"],
        wcs_lookup(products), products["masters"], config, ctx.executor(), detections=products["detections"],
    )
    ctx.timings["occupancy"] = time.perf_counter() - t0
    return {"observations": observations, "objects": objects, "streaks": release_trails(products["streaks"],
                                                                                        stats["rejected"]),
            "link_stats": {**products.get("link_stats", {}), "occupancy": stats}}


def _image_reader(products: dict, config: Config):
    masters = products["masters"]
    return lambda ref: subtracted_image(ref, config, masters.get(ref.ccd), with_noise=True)


def step_stack(products: dict, config: Config, ctx: StepContext) -> dict:
    """Shift-and-stack search for movers too faint for single exposures."""
    observations, objects = stack_objects(
        products["observations"], products["objects"], products["exposures"], products["ccd_info"],
        wcs_lookup(products), _image_reader(products, config), config, ctx.timings,
    )
    return {"observations": observations, "objects": objects}


def step_vet(products: dict, config: Config, ctx: StepContext) -> dict:
    """Score every object's track-following image sequence with the 3D-CNN; remove those below the threshold."""
    keep = ctx.intermediate("vet")
    if keep is not None:  # the candidate list before vetting
        products["observations"].write(keep / "observations_before_vetting.ecsv", format="ascii.ecsv")
        products["objects"].write(keep / "objects_before_vetting.ecsv", format="ascii.ecsv")
    observations, objects, vetting = vet_objects(
        products["observations"], products["objects"], products["exposures"], products["ccd_info"],
        wcs_lookup(products), _image_reader(products, config), config, ctx.timings,
    )
    return {"observations": observations, "objects": objects, "vetting": vetting}


def step_known(products: dict, config: Config, ctx: StepContext) -> dict:
    """Name linked objects after known ones (orbit files, SkyBoT) and measure known objects not linked."""
    args = (products["exposures"], products["ccd_info"], wcs_lookup(products))
    known, predictions = identify_known(products["observations"], products["objects"], *args, products["orbits"],
                                        config)
    observations, objects = recover_known(products["observations"], products["objects"], known, predictions, *args,
                                          _image_reader(products, config), config)
    return {"observations": observations, "objects": objects, "known": known}


def step_report(products: dict, config: Config, ctx: StepContext) -> dict:
    """Write the tables, cutouts, ADES/MPC/HTML reports and the alert document."""
    objects = products.get("objects")
    hint = time_order_differs(products["exposures"])
    if hint:  # shuffled or reversed times give no movers, or movers in the wrong direction
        log.warning("%s%s (every motion follows the times)",
                    "no moving object found; " if objects is not None and len(objects) == 0 else "", hint)
    if ctx.stage is not None:
        _write_outputs(ctx.stage, run_result(products), config, ctx.inputs, ctx.refcat, ctx.timings)
        if config.alerts.enabled:
            write_alert(ctx.stage.path, ctx.stage.file("alert.json"), run_id=ctx.run_id,
                        obs_id=ctx.obs_id or products.get("obs_id", ""))
    return {}


_PIXELS = ("io", "calibrate", "detect")

#: Type of each product passed between steps (``ssodetect steps`` shows them).
PRODUCTS = {
    "exposures": "list[io.Exposure]: CCD references per exposure, time-ordered",
    "masters": "dict[ccd, calibrate.MasterFrames]: calibration masters (empty without)",
    "reference": "Table | None: reference catalogue (Gaia DR3 columns)",
    "orbits": "Table | None: orbital elements of known objects",
    "obs_id": "str: observation / field identifier from the headers",
    "ccd_results": "list[(Table, dict)]: per CCD image its detections (header WCS) and diagnostics",
    "detections": "Table: the field's detections on the sky (fitted WCS)",
    "ccd_info": "list[dict]: per CCD image diagnostics (PSF, counts, astrometric solution)",
    "astrometry": "Table | None: per CCD exposure the fitted WCS and zero point",
    "wcs_headers": "dict[(exposure, ccd), str]: header WCS cards",
    "candidates": "Table: moving-object candidates (static sources removed)",
    "observations": "Table: one row per object and exposure",
    "objects": "Table: one row per moving object",
    "streaks": "Table: every trail and what became of it",
    "link_stats": "dict: the link step's counts (selection, static, seeds, chance alignments, fast-linker bookkeeping)",
    "vetting": "Table | None: CNN score of every object",
    "known": "Table | None: known objects predicted in the field",
}

#: The built-in steps in execution order (``ssodetect steps`` prints them).
BUILTIN_STEPS = [
    Step("ingest", step_ingest, (), ("exposures", "masters", "reference", "orbits", "obs_id"),
         ("io", "calibrate", "link.min_detections", "astrometry.blind_pointing"), "2",
         "scan inputs, group exposures, calibration masters, reference catalogue, orbits", cache=False),
    Step("detect", step_detect, ("exposures", "masters", "reference"), ("ccd_results",),
         ("io", "calibrate", "clean", "detect", "streaks.enabled", "streaks.min_length", "streaks.max_length",
          "streaks.max_gap", "astrometry.register_frames", "astrometry.blind", "astrometry.trailed_stars",
          "astrometry.min_snr", "intermediate"), "27",
         "per CCD image: calibrate, clean cosmic rays, background, extract and measure sources, refine trails"),
    Step("astrometry", step_astrometry, ("exposures", "reference", "ccd_results"),
         ("detections", "ccd_info", "astrometry", "wcs_headers"), ("astrometry", "intermediate"), "12",
         "fit each CCD exposure's WCS and zero point against the reference catalogue (or register frames)"),
    Step("link", step_link, ("exposures", "detections"), ("candidates", "observations", "objects", "streaks",
                                                           "link_stats"),
         ("link", "streaks"), "23", "remove static sources and artefacts; link slow movers and trails of fast ones"),
    Step("blends", step_blends, ("exposures", "masters", "ccd_info", "wcs_headers", "astrometry", "detections",
                                 "candidates", "observations", "objects", "streaks", "link_stats"),
         ("observations", "objects", "streaks", "link_stats"),
         ("link.blend_recovery", "link.blend_min_snr", "link.min_rate", "link.max_rate", "link.min_rate_significance",
          "link.flux_scatter", "link.match_sigma", "link.match_floor", "link.position_floor", "link.max_chi2_dof",
          "link.min_detections", "link.min_total_snr", "streaks.enabled", "streaks.min_length") + _PIXELS, "13",
         "measure slow movers seen cleanly twice, and fast movers seen whole once, where a brighter source or a "
         "spike hides them in the other exposures (pixels)",
         enabled=lambda c: c.link.blend_recovery),
    Step("occupancy", step_occupancy, ("exposures", "masters", "ccd_info", "wcs_headers", "astrometry", "detections",
                                       "observations", "objects", "streaks", "link_stats"),
         ("observations", "objects", "streaks", "link_stats"),
         ("link.occupancy_test", "link.occupancy_threshold", "link.occupancy_max_overlap", "link.occupancy_max_error",
          "link.occupancy_nsigma", "link.missing_max_deficit", "link.flux_scatter", "link.confirm_min_snr")
         + _PIXELS, "9", "remove movers whose positions still hold their source after they moved on; confirm doubtful "
         "tracklets where they were not detected (pixels)",
         enabled=lambda c: c.link.occupancy_test),
    Step("stack", step_stack, ("exposures", "masters", "ccd_info", "wcs_headers", "astrometry", "observations",
                               "objects"), ("observations", "objects"), ("stack",) + _PIXELS, "1",
         "shift-and-stack search for movers too faint for one exposure", enabled=lambda c: c.stack.enabled),
    Step("vet", step_vet, ("exposures", "masters", "ccd_info", "wcs_headers", "astrometry", "observations", "objects"),
         ("observations", "objects", "vetting"), ("ml", "intermediate") + _PIXELS, "1",
         "3D-CNN vetting of every object's image sequence", enabled=lambda c: c.ml.enabled),
    Step("known", step_known, ("exposures", "masters", "ccd_info", "wcs_headers", "astrometry", "orbits",
                               "observations", "objects"), ("observations", "objects", "known"),
         ("known",) + _PIXELS, "1", "identify known objects; measure known objects not linked",
         enabled=lambda c: bool(c.known.orbits or c.known.skybot)),
    Step("report", step_report, ("exposures", "masters", "ccd_info", "wcs_headers", "astrometry", "candidates",
                                 "observations", "objects", "streaks", "vetting", "known", "link_stats"), (),
         ("report", "alerts"), "1", "tables, cutouts, ADES PSV/XML, MPC 80-column, HTML report, alert", cache=False),
]

#: Files a run writes at its top level; those a later partial run did not write are removed (they would
#: contradict its manifest).
RUN_PRODUCTS = ("observations.ecsv", "objects.ecsv", "astrometry.ecsv", "streaks.ecsv", "known.ecsv", "vetting.ecsv",
                "cutouts.fits", "overview.fits", "provenance.json", "observations.psv", "observations.xml",
                "observations.mpc", "objects.reg", "report.html", "alert.json")


def run_result(products: dict) -> RunResult:
    """The :class:`RunResult` of a run's products (tables absent when their step did not run)."""
    return RunResult(
        observations=products.get("observations"), objects=products.get("objects"),
        candidates=products.get("candidates"), astrometry=products.get("astrometry"),
        streaks=products.get("streaks"), ccd_info=products.get("ccd_info", []),
        exposures=products.get("exposures", []), masters=products.get("masters", {}),
        known=products.get("known"), wcs_headers=products.get("wcs_headers", {}), vetting=products.get("vetting"),
        link_stats=products.get("link_stats", {}), obs_id=products.get("obs_id", ""),
    )


#: Warnings of a step kept with its stored products (and said again when they are loaded).
MAX_KEPT_WARNINGS = 200


def _kept_warnings(messages: list) -> list[str]:
    """A step's warnings as stored with its products: at most :data:`MAX_KEPT_WARNINGS`, the rest counted in a last
    line (said again with the others when the products are loaded)."""
    kept = [str(m) for m in messages[:MAX_KEPT_WARNINGS]]
    if len(messages) > MAX_KEPT_WARNINGS:
        kept.append(f"{len(messages) - MAX_KEPT_WARNINGS} more warnings of this step are in its earlier run's log")
    return kept


def _api_arguments(inputs, config, keywords) -> tuple[list, Config, list]:
    """``run_pipeline``'s arguments as it uses them: one path or an iterable of them; a Config, a mapping of its
    sections (validated) or None; one word or a list of them.  Anything else is a ConfigError naming it (a string
    of inputs was taken letter by letter: 'scene' became the files s, c, e, n, e)."""
    if isinstance(inputs, (str, bytes, os.PathLike)):
        inputs = [inputs]
    try:
        inputs = list(inputs)
    except TypeError:
        raise ConfigError(f"inputs {inputs!r}: a path or a list of paths") from None
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)):
            raise ConfigError(f"inputs: {item!r} is no path (a str or a pathlib.Path)")
    if config is None:
        config = Config()
    elif isinstance(config, Mapping):
        try:
            config = Config.model_validate(dict(config))
        except ValidationError as exc:
            raise ConfigError(f"config: invalid configuration ({validation_problems(exc)})") from None
    elif not isinstance(config, Config):
        raise ConfigError(f"config: a {type(config).__name__} is no configuration (a ssodetect.config.Config, a dict "
                          "of its sections, or None)")
    if keywords is None or isinstance(keywords, str):
        keywords = [keywords] if keywords else []
    else:
        try:
            keywords = list(keywords)
        except TypeError:
            raise ConfigError(f"keywords {keywords!r}: a word or a list of words") from None
        if not all(isinstance(k, str) for k in keywords):
            raise ConfigError(f"keywords {keywords!r}: a word or a list of words")
    for word in keywords:
        check_label("keywords", word)
    return inputs, config, keywords


def _recorded_refcat(refcat) -> str | None:
    """``refcat`` as provenance records it: an absolute path (a later command may run elsewhere), or ``gaia``."""
    if not refcat:
        return None
    return "gaia" if str(refcat).lower() == "gaia" else os.path.abspath(refcat)


def _api_paths(**paths) -> None:
    """Refuse a path argument of the Python API that is no path (None passes): an int given as ``refcat`` was opened
    as a file descriptor, and whatever file was open there read as the catalogue."""
    for name, value in paths.items():
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{name}: {value!r} is no path (a str or a pathlib.Path)")


#: Longest obs_id or keyword [characters]: they go into file names, reports and the registry.
MAX_LABEL = 64


def check_label(option: str, value: str) -> None:
    """Refuse an obs_id or keyword that is not one printable line of 1 to :data:`MAX_LABEL` characters."""
    if not (isinstance(value, str) and value.strip() and value.isprintable() and len(value) <= MAX_LABEL):
        raise ConfigError(f"{option} {value!r}: printable text of 1 to {MAX_LABEL} characters")


def run_pipeline(
    inputs, outdir: str | Path | None, config: Config | None = None, *, refcat: str | Path | None = None,
    from_step: str | None = None, to_step: str | None = None, reuse: bool = True, obs_id: str | None = None,
    command: list[str] | None = None, keywords: list[str] | None = None,
) -> RunResult:
    """Run the pipeline's steps on a sequence of exposures.

    Parameters
    ----------
    inputs : path or iterable of path
        FITS files and/or directories.
    outdir : path or None
        Output directory; None runs without writing anything.
    config : Config or dict, optional
        Defaults when None; a dict is validated as the sections of a configuration file.
    refcat : path, optional
        Reference catalogue (Gaia DR3 column names, or SCAMP LDAC).  With
        ``[astrometry] enabled`` (default) every CCD exposure gets a fitted
        TAN+SIP WCS and zero point (``astrometry.ecsv``); otherwise the header
        WCS is only checked against it.
    from_step : str, optional
        Start at this step: the steps before it are loaded from ``outdir``'s
        step cache, which must match the inputs and configuration.
    to_step : str, optional
        Stop after this step (its products and those before are stored for a
        later ``from_step``; the final tables and reports are not written).
    reuse : bool
        Load any step whose version, configuration and inputs are unchanged
        since a run into ``outdir`` (verified by checksum) instead of running it.
    obs_id : str, optional
        Observation / field identifier (default: from the headers, ``[io] obs_id_keys``).
    command : list of str, optional
        The command line, for the manifest.
    keywords : str or list of str, optional
        Words the manifest carries for the run registry and console (``ssodetect runs --search``).

    Returns
    -------
    RunResult
        ``steps`` holds each step's record (status run | cached | off | not run, seconds, key).

    Raises
    ------
    SSODetectError
        Bad inputs or configuration (nothing is written).
    """
    inputs, config, keywords = _api_arguments(inputs, config, keywords)
    _api_paths(refcat=refcat, outdir=outdir)
    if obs_id is not None:
        check_label("obs_id", obs_id)
    if command is not None:  # (a str was recorded in the manifest one character per argument)
        if isinstance(command, (str, bytes)) or not all(isinstance(a, str) for a in command):
            raise ConfigError(f"command {command!r}: the command line as a list of str (e.g. sys.argv)")
    if not isinstance(reuse, (bool, np.bool_)):  # ("no" was read as true: campaign 31)
        raise ConfigError(f"reuse {reuse!r}: True or False")
    require_extras(config.execution, astroscrappy=config.clean.astroscrappy)
    steps = pipeline_steps(BUILTIN_STEPS)
    names = [s.name for s in steps]
    for label, name in (("--from-step", from_step), ("--to-step", to_step)):
        if name is not None and name not in names:
            raise ConfigError(f"{label}: unknown step {name!r}; steps: {', '.join(names)}")
    first = names.index(from_step) if from_step else 0
    last = names.index(to_step) if to_step else len(steps) - 1
    if last < first:
        raise ConfigError(f"--to-step {to_step} comes before --from-step {from_step}")
    if from_step and outdir is None:
        raise ConfigError("--from-step needs the output directory of an earlier run")
    timings = StageTimings()
    t_run = time.perf_counter()
    started = datetime.now(timezone.utc)
    if outdir is not None and not str(outdir).strip():
        raise InputError(f"{str(outdir)!r}: an empty output directory path")
    check_path_names([*([inputs] if isinstance(inputs, (str, Path)) else inputs if isinstance(inputs, (list, tuple))
                        else []), refcat, outdir])
    check_named_files(refcat, config)
    if outdir is not None:
        check_apart(outdir, [*inputs, *([refcat] if refcat is not None else [])])
        check_apart(outdir, [cache_key_path()], "step-cache signing key (SSODETECT_CACHE_KEY)")
    stage = OutputStage(outdir, replace=True, kind="run") if outdir is not None else None
    handler = None
    package_log = logging.getLogger("ssodetect")
    saved_level = package_log.level
    counter = WarningCount()
    package_log.addHandler(counter)
    if stage is not None:
        if package_log.getEffectiveLevel() > logging.INFO:
            package_log.setLevel(logging.INFO)  # run.log records the run's progress; restored below
        handler = logging.FileHandler(stage.file("run.log"))
        handler.setFormatter(PrintableFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.DEBUG)
        handler.addFilter(RepeatFilter())
        package_log.addHandler(handler)
    step_logs: list = []
    ctx = None
    try:
        config, profile = resolve_profile(config, find_inputs(inputs))
        if config.intermediate.keep:  # intermediate/astrometry/<stem>.head per input file
            check_header_stems(find_inputs(inputs))
        if stage is not None and last < len(steps) - 1 and (Path(outdir) / "report.html").is_file():
            # a partial run replaces OUTDIR whole, as every run does: said, since it removes a finished run's reports
            # (campaign 31: its report, ADES and MPC files went without a word)
            log.warning("%s: holds a finished run's reports; this run stops after step %s and replaces it (the "
                        "reports are removed; --from-step %s completes it again)", outdir, names[last],
                        names[min(last + 1, len(names) - 1)])
        ctx = StepContext(list(inputs), refcat, config, timings, stage, run_id=uuid.uuid4().hex, obs_id=obs_id or "")
        files = _input_files(inputs, refcat, config)
        if stage is not None:
            check_free_space(stage, sum(f["bytes"] for f in files if f["role"] == "input"),
                             keep=config.intermediate.keep)
        cache = StepCache(outdir if (reuse or from_step) else None, stage.path if stage is not None else None)
        products: dict = {}
        producer: dict[str, str] = {}
        records = []
        for k, step in enumerate(steps):
            if k > last:
                records.append({"step": step.name, "version": step.version, "origin": step.origin, "status": "not run"})
                continue
            upstream = {p: producer[p] for p in step.inputs if p in producer}
            roles = STEP_FILES.get(step.name, ())
            key = step_key(step, config, upstream, {"files": [f for f in files if f["role"] in roles]} if roles else None)
            record = {"step": step.name, "version": step.version, "origin": step.origin, "key": key}
            t0 = time.perf_counter()
            step_log = _step_log(stage, step.name)
            step_logs.append(step_log)
            if not step.enabled(config):
                record["status"] = "off"
            else:
                loaded = None
                if step.cache and outdir is not None and (k < first or (reuse and not from_step)):
                    loaded, why = cache.load(step.name, key, {"version": step.version, "upstream": upstream,
                                                              "config": config_slice(config, step.config)})
                    if loaded is None and k < first:
                        raise InputError(f"{outdir}: cannot start at step {from_step}: step {step.name}: {why} "
                                         "(run from an earlier step)")
                if loaded is not None:
                    products.update(loaded)
                    # what the step warned about still holds for its products: said again (and counted)
                    for message in (cache.record(step.name) or {}).get("warnings", []):
                        log.warning("%s (step %s, as its earlier run said)", message, step.name)
                    if stage is not None:  # its stored products and intermediate files stay with the new run's
                        for kept in (f"steps/{step.name}.pkl", f"steps/{step.name}.json", f"intermediate/{step.name}"):
                            stage.carry(kept)
                    record["status"] = "cached"
                    log.info("step %s: products of an identical earlier run loaded", step.name)
                else:
                    counter.messages = []
                    made = step.run(products, config, ctx) or {}
                    unknown = set(made) - set(step.outputs)
                    if unknown:
                        raise ConfigError(f"step {step.name} ({step.origin}) made undeclared products: "
                                          f"{', '.join(sorted(unknown))}")
                    products.update(made)
                    record["status"] = "run"
                    if step.cache and stage is not None:
                        cache.save(step.name, key, made, {"version": step.version, "origin": step.origin,
                                                          "config": config_slice(config, step.config),
                                                          "upstream": upstream,
                                                          "warnings": _kept_warnings(counter.messages)})
            if step_log is not None:
                log.info("step %s: %s in %.2f s", step.name, record["status"], time.perf_counter() - t0)
                package_log.removeHandler(step_log)
                step_log.close()
            record["seconds"] = round(time.perf_counter() - t0, 3)
            timings[step.name] = time.perf_counter() - t0
            record["peak_rss_mb"] = round(timings.peak_mb[step.name], 1)
            records.append(record)
            for product in step.outputs:
                producer[product] = key
        ctx.close()
        timings["total"] = time.perf_counter() - t_run
        result = run_result(products)
        result.obs_id = obs_id or products.get("obs_id", "")
        result.run_id = ctx.run_id
        result.steps = records
        result.timings = timings
        result.profile = profile
        if stage is not None:
            stage.file("config.toml").write_text(dump_toml(config))
            manifest = _manifest(result, config, files, records, started, command, counter.count, stage)
            manifest["keywords"] = [str(k) for k in (keywords or [])]
            stage.file("manifest.json").write_text(json.dumps(manifest, indent=2))
            written = {p.name for p in stage.path.iterdir()}
            stage.commit(keep_lock=True)  # held until the alert is delivered and recorded (N4b)
            result.outdir = Path(outdir)
            alert = Path(outdir) / "alert.json"
            if "alert.json" in written:
                # run.log (committed with its file still open: the same file, now in OUTDIR) records the delivery
                result.alert_delivered = deliver_alert(alert, config.alerts)
            package_log.removeHandler(handler)
            handler.close()
            handler = None
            if "alert.json" in written:
                # the delivery's lines changed run.log after the products record took its checksum: recorded again,
                # or the next run would take it for the user's file and refuse the directory (eighth campaign, N4)
                try:
                    record_files(outdir, ["run.log"])
                except OSError as exc:
                    log.warning("%s: cannot record run.log after the alert's delivery (%s): the next run into it "
                                "will take run.log for a file of yours", outdir, exc.strerror or exc)
            stage.release()
        result.warnings = counter.count
        return result
    except BaseException:
        if ctx is not None:
            ctx.close()
        if stage is not None:
            stage.discard()
        raise
    finally:
        package_log.removeHandler(counter)
        for step_log in step_logs:
            if step_log is not None:
                package_log.removeHandler(step_log)
                step_log.close()
        if handler is not None:
            package_log.removeHandler(handler)
            handler.close()
        package_log.setLevel(saved_level)


#: Which files' checksums enter which step's key, by role (see :func:`_input_files`).
STEP_FILES = {"ingest": ("input", "refcat", "calibration"), "astrometry": ("reference_wcs",), "known": ("orbits",),
              "vet": ("model",)}


def _step_log(stage: OutputStage | None, name: str) -> logging.Handler | None:
    """A handler copying the package's log lines to ``logs/<name>.log`` in the stage while a step runs."""
    if stage is None:
        return None
    folder = stage.path / "logs"
    folder.mkdir(exist_ok=True)
    handler = logging.FileHandler(folder / f"{name}.log")
    handler.setFormatter(PrintableFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    handler.addFilter(RepeatFilter())
    logging.getLogger("ssodetect").addHandler(handler)
    return handler


def named_files(refcat, config: Config) -> list[tuple]:
    """The files a run reads besides its frames, with their role."""
    named = [(refcat, "reference catalogue")] if refcat is not None else []
    named += [(p, "calibration") for p in (*config.calibrate.bias, *config.calibrate.dark, *config.calibrate.flat)]
    named += [(p, "orbits") for p in config.known.orbits]
    if config.astrometry.reference_wcs:
        named.append((config.astrometry.reference_wcs, "reference WCS"))
    if config.ml.enabled and config.ml.model != "builtin":
        named.append((config.ml.model, "model"))
    return named


def check_named_files(refcat, config: Config | None, *, missing: bool = False) -> None:
    """Refuse, before any work, a file the configuration (or ``refcat``) names that exists as a pipe, a device or a
    directory (never opened: a pipe would block the run for ever); a missing one is reported where it is read, or
    here with ``missing`` (``config --file``, which reads none of them)."""
    if config is None:
        return
    for path, role in named_files(refcat, config):
        check_regular_file(path, role)
        if missing and not Path(path).exists():
            raise InputError(f"{path}: the {role} file named in the configuration is not found")


def _input_files(inputs, refcat, config: Config) -> list[dict]:
    """Every file a run reads with its role (input | refcat | calibration | orbits | reference_wcs | model), size and
    SHA-256."""
    short = {"reference catalogue": "refcat", "reference WCS": "reference_wcs"}
    named = [(p, "input") for p in find_inputs(inputs)]
    named += [(p, short.get(role, role)) for p, role in named_files(refcat, config)]
    return [{"path": str(p), "role": role, "bytes": Path(p).stat().st_size, "sha256": sha256_file(p)}
            for p, role in named if Path(p).is_file()]


def _manifest(result: RunResult, config: Config, files: list, records: list, started, command, warnings: int,
              stage: OutputStage) -> dict:
    objects = result.objects
    n_known = int(sum(bool(str(d)) for d in objects["designation"])) if objects is not None and len(objects) else 0
    products = {}
    for path in sorted(stage.path.rglob("*")):
        if path.is_file() and path.name not in ("manifest.json", "run.log", STAGE_MARKER):
            products[str(path.relative_to(stage.path))] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return {
        "run_id": result.run_id,
        "obs_id": result.obs_id,
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": list(command) if command else None,
        "host": platform.node(),
        "software": _versions(),
        "inputs": files,
        "profile": result.profile,
        "config": config.model_dump(mode="json"),
        "steps": records,
        "results": None if objects is None else {
            "n_objects": len(objects), "n_known": n_known, "n_unidentified": len(objects) - n_known,
            "n_observations": len(result.observations)},
        "warnings": warnings,
        "products": products,
    }


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
            lambda ref: calibrated_image(ref, config, result.masters.get(ref.ccd)),
            size=config.report.cutout_size, wcs_for=wcs_lookup(result),
        )
        cutouts.writeto(stage.file("cutouts.fits"))
        overview.writeto(stage.file("overview.fits"))
    if result.exposures:
        counts = write_exposure_regions(
            stage.file(REGIONS_DIR), [(e.index, r.ccd) for e in result.exposures for r in e.ccds],
            candidates=result.candidates, observations=result.observations, streaks=result.streaks,
            exposure_mjd={e.index: float(e.mid_time.utc.mjd) for e in result.exposures}, wcs_for=wcs_lookup(result))
        log.info("%s/: %d DS9 region files of the CCD exposures (%d regions: kept detections, objects, tracks, trails)",
                 REGIONS_DIR, len(counts), sum(counts.values()))
    provenance = {
        "software": _versions(),
        "inputs": [os.path.abspath(p) for p in inputs],  # (a later command may run elsewhere)
        "refcat": _recorded_refcat(refcat),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "peak_rss_mb": {k: round(v, 1) for k, v in getattr(timings, "peak_mb", {}).items()},
        "n_objects": len(result.objects),
        "n_observations": len(result.observations),
        "ccds": [_jsonable(info) for info in result.ccd_info],
        "link": _jsonable(result.link_stats),
        "report_context": _jsonable(context),
    }
    stage.file("provenance.json").write_text(json.dumps(provenance, indent=2))
    write_reports(stage.path, stage.path, config, title=f"ssodetect run: {stage.outdir.resolve().name}")


def wcs_lookup(products) -> Callable:
    """(exposure, ccd) -> the WCS positions went through: fitted, else the header's (None without).

    ``products`` is a run's products dict or a :class:`RunResult` (``wcs_headers``, ``astrometry``).
    """
    get = products.get if isinstance(products, dict) else lambda name, default=None: getattr(products, name, default)
    texts = dict(get("wcs_headers") or {})
    astrometry = get("astrometry")
    if astrometry is not None:
        for row in astrometry:
            if str(row["status"]) == "ok" and str(row["wcs_header"]):
                texts[(int(row["exposure"]), str(row["ccd"]))] = str(row["wcs_header"])

    made: dict = {}  # built once per CCD exposure (the blends step asks thousands of times; callers only read it)

    def lookup(exposure, ccd):
        key = (int(exposure), str(ccd))
        if key not in made:
            text = texts.get(key, "")
            made[key] = wcs_from_header_string(text) if text else None
        return made[key]

    return lookup


def _report_context(result: RunResult, config: Config) -> dict:
    """What the reports need beyond the tables: observatory code, band, filter, seeing [arcsec] and
    spacecraft position [km] per exposure, pixel scale [arcsec/px], detector format."""
    context: dict = {"station": config.report.station, "band": "", "filter": "", "seeing": {}, "positions": {},
                     "catalogue_fit": result.astrometry is not None}
    refs = [r for e in result.exposures for r in e.ccds]
    if refs:
        from astropy.io import fits

        header = fits.getheader(refs[0].path, refs[0].sci)
        filters = {str(r.filter).strip() for r in refs}
        context["filter"] = refs[0].filter if len(filters) == 1 else "/".join(sorted(filters))
        context["band"] = str(refs[0].filter).strip() if len(filters) == 1 else ""  # no single band: no magnitudes
        if context["band"] and not config.report.band and not re.fullmatch(f"{BAND_CHARACTERS}+", context["band"]):
            # (a filter name is written as the reports' band: 'g|r' added a field to every PSV row)
            log.warning("%s: filter %r is no band name the reports can carry (letters, digits, _ . ' -): "
                        "magnitudes left out of them; set [report] band", refs[0].path, context["band"])
            context["band"] = ""
        primary = fits.getheader(refs[0].path, 0)
        problems: list[str] = []
        code = station_code(header, problems=problems) or station_code(primary, problems=problems)
        for problem in dict.fromkeys(problems) if config.report.station == "XXX" else ():
            log.warning("%s: %s", refs[0].path, problem)
        if config.report.station == "XXX" and code:
            log.info("observatory code %s from the header of %s", code, refs[0].path)
            context["station"] = code
        context["telescope"] = str(header.get("TELESCOP", primary.get("TELESCOP", ""))).strip()
        problems = []
        aperture = telescope_aperture(header, problems) or telescope_aperture(primary, problems)
        for problem in dict.fromkeys(problems) if config.report.telescope_aperture <= 0 else ():
            log.warning("%s: %s", refs[0].path, problem)
        if aperture:
            context["aperture"] = list(aperture)
    # where each CCD exposure's zero point came from: fit (reference catalogue), header, or default
    sources = {f"{info['exposure']}:{info['ccd']}": str(info.get("zeropoint_source", "default"))
               for info in result.ccd_info if "exposure" in info and "ccd" in info}
    if result.astrometry is not None and len(result.astrometry):
        for row in result.astrometry:
            if np.isfinite(float(row["zeropoint"])) and str(row["status"]) == "ok":
                sources[f"{int(row['exposure'])}:{row['ccd']}"] = "fit"
    context["zeropoint_sources"] = sources
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
    context.update(_observing_context(result, config, refs))
    return context


def _observing_context(result: RunResult, config: Config, refs: list) -> dict:
    """The report's header facts: observation id, exposures (mid-time MJD UTC, exposure time [s], time keywords),
    observatory name, field centre and radius [deg], zero point and 5-sigma limit per CCD exposure."""
    from astropy.io import fits

    out: dict = {"obs_id": result.obs_id, "observatory": ""}
    out["exposures"] = [{"index": e.index, "mjd": float(e.mid_time.utc.mjd), "exptime": float(e.exptime),
                         "time_source": e.ccds[0].time_source if e.ccds else ""} for e in result.exposures]
    if refs:
        for hdu in dict.fromkeys((refs[0].sci, 0)):
            header = fits.getheader(refs[0].path, hdu)
            key = next((k for k in ("OBSERVAT", "OBSERVATORY", "SITENAME") if str(header.get(k, "")).strip()), None)
            if key is None and station_code({"ORIGIN": header.get("ORIGIN", "")}, keys=()):
                key = "ORIGIN"  # an observatory's name with its code: 'MIT Wallace Astrophysical Observatory (810)'
            if key:
                out["observatory"] = str(header[key]).strip()[:100]
                out["observatory_key"] = key
                break
    lookup = wcs_lookup(result)
    first = result.exposures[0].index if result.exposures else None
    points, fitted = [], False
    for info in result.ccd_info:
        if info.get("exposure") != first or not info.get("shape"):
            continue
        wcs = lookup(first, info["ccd"])
        if wcs is None:
            continue
        ny, nx = info["shape"]
        x = np.array([0.5 * (nx - 1), 0, nx - 1, 0, nx - 1], float)
        y = np.array([0.5 * (ny - 1), 0, 0, ny - 1, ny - 1], float)
        points.append(wcs.all_pix2world(x, y, 0))
    solved = {(int(r["exposure"]), str(r["ccd"])): str(r["status"]) == "ok" for r in result.astrometry} \
        if result.astrometry is not None and len(result.astrometry) else {}
    fitted = any(v for (e, _), v in solved.items() if e == first)
    centre = field_centre(points)
    out["field_centre"] = list(centre) if centre else None
    out["field_centre_source"] = "fitted WCS" if fitted else "header WCS"
    fitted_zps = {(int(r["exposure"]), str(r["ccd"])): float(r["zeropoint"]) for r in result.astrometry
                  if str(r["status"]) == "ok"} if result.astrometry is not None else {}
    out["zeropoints"], out["limits"] = ccd_limits(result.ccd_info, fitted_zps,
                                                  {e.index: e.exptime for e in result.exposures},
                                                  config.io.default_zeropoint)
    return out


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
    inputs, config, _ = _api_arguments(inputs, config, None)
    _api_paths(refcat=refcat, outdir=outdir)
    if outdir is None or refcat is None:
        raise ConfigError("run_astrometry needs an outdir and a refcat")
    check_apart(outdir, [*inputs, refcat])
    unknown = set(formats) - {"head", "fits"}
    if unknown:
        raise ConfigError(f"unknown header output format(s): {', '.join(sorted(unknown))}")
    timings: dict[str, float] = {}
    t_run = time.perf_counter()
    paths = find_inputs(inputs)
    check_header_stems(paths)
    # OUTDIR taken before any work: files ssodetect did not write there, no permission, another command on it
    stage = OutputStage(outdir, replace=True, kind="astrometry")
    try:
        refs, masters = build_calibration(scan_inputs(paths, config.io), config)
        reference = load_reference_catalogue(refcat)
        exposures = group_exposures(refs, config.io, min_exposures=1)
        tasks = [ref for exp in exposures for ref in exp.ccds]
        with make_executor(workers=config.execution.workers, scheduler=config.execution.scheduler) as executor:
            t0 = time.perf_counter()
            results = _detect(tasks, config, masters, reference, executor)
            timings["detect"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            solutions = _solve(results, tasks, reference, config, executor)
            timings["astrometry"] = time.perf_counter() - t0
        warn_doubtful_zeropoints(solutions, tasks, [info for _, info in results])
    except BaseException:
        stage.discard()
        raise
    table = solution_table(solutions)
    by_key = {(s.exposure, s.ccd): s for s in solutions}
    with stage:
        for path in sorted({ref.path for ref in tasks}):
            mine = sorted((ref for ref in tasks if ref.path == path), key=lambda r: r.sci)
            sols = [(ref, by_key.get((ref.exposure, ref.ccd))) for ref in mine]
            write_refined_headers(Path(path), sols, stage, formats)
        table.write(stage.file("astrometry.ecsv"), format="ascii.ecsv")
        stage.file("config.toml").write_text(dump_toml(config))
        timings["total"] = time.perf_counter() - t_run
        provenance = {
            "software": _versions(),
            "inputs": [os.path.abspath(p) for p in inputs],  # (a later command may run elsewhere)
            "refcat": _recorded_refcat(refcat),
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
