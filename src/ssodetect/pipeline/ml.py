"""Pipeline steps of the machine-learning vetting: frames from files, datasets, and the vetting stage.

* :func:`read_frames` turns FITS inputs into :class:`ssodetect.ml.sequences.Frame` sequences (one per
  CCD), with the static sources of the frames for hard negatives.
* :func:`make_dataset` draws a dataset from them (``ssodetect ml dataset``).
* :func:`vet_objects` scores every object of a run with the CNN on its track-following sequence and
  removes those below ``[ml] threshold`` (``ssodetect run`` with ``[ml] enabled = true``);
  :func:`score_run` does it for a finished run (``ssodetect ml predict RUN_DIR``).
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from scipy.spatial import cKDTree

from ssodetect import safejson
from ssodetect._version import __version__
from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.calibrate import build_calibration
from ssodetect.config import Config
from ssodetect.errors import InputError, reason
from ssodetect.io import common_ccds, find_inputs, group_exposures, scan_inputs
from ssodetect.io.columns import number_column
from ssodetect.io.frames import check_regular_file
from ssodetect.io.outputs import check_apart, check_directory_kind, check_not_inside, sha256_file
from ssodetect.ml.sequences import Frame, cut_sequences, track_grids
from ssodetect.pipeline.astrometry import wcs_from_header_string
from ssodetect.pipeline.ccd import process_ccd, subtracted_image
from ssodetect.simulate.render import FWHM_TO_SIGMA

__all__ = ["VETTING_COLUMNS", "read_frames", "make_dataset", "score_run", "vet_objects"]

log = logging.getLogger(__name__)

STATIC_RADIUS = 0.3  # [arcsec] a source of the first frame found again this close in the last one is static

VETTING_COLUMNS = [
    ("object", "U8", "", "object identifier"),
    ("kind", "U8", "", "how the object was found"),
    ("ccd", "U32", "", "CCD of its observations"),
    ("rate", "f8", "arcsec / h", "rate of motion"),
    ("mag", "f8", "mag", "mean magnitude"),
    ("ml_score", "f8", "", "mover probability from the CNN"),
    ("kept", "bool", "", "score >= [ml] threshold"),
]


def _header_fwhm(path: str, hdu: int) -> float:
    """PSF_FWHM [px] from the image or primary header (written by the simulator), else NaN."""
    with fits.open(path) as hdul:
        for h in (hdul[hdu].header, hdul[0].header):
            if "PSF_FWHM" in h:
                return float(h["PSF_FWHM"])
    return math.nan


def _static_sources(first: Table, last: Table) -> Table:
    """Sources of the first exposure seen again within STATIC_RADIUS in the last: stars (point) and galaxies."""
    empty = Table({"ra": np.zeros(0), "dec": np.zeros(0), "kind": np.zeros(0, "U8")})
    keep = np.isin(np.asarray(first["kind"]).astype(str), ("point", "extended")) & (np.asarray(first["snr"]) >= 10)
    first = first[keep]
    if len(first) == 0 or len(last) == 0:
        return empty
    plane = TangentPlane(float(np.median(first["ra"])), float(np.median(first["dec"])))
    a = np.column_stack(plane.to_plane(first["ra"], first["dec"]))
    b = np.column_stack(plane.to_plane(last["ra"], last["dec"]))
    dist, _ = cKDTree(b).query(a, distance_upper_bound=STATIC_RADIUS)
    static = first[np.isfinite(dist)]
    kind = np.where(np.asarray(static["kind"]).astype(str) == "extended", "galaxy", "star")
    return Table({"ra": np.asarray(static["ra"], float), "dec": np.asarray(static["dec"], float), "kind": kind})


def read_frames(inputs, config: Config, *, fwhm: float = 0.0) -> list[tuple[str, list[Frame], Table]]:
    """Frames of every CCD seen in all exposures of ``inputs``, with their static sources.

    Parameters
    ----------
    inputs : list of str or Path
        FITS files and/or directories (an exposure sequence of 3 or more; never modified).
    config : Config
        Reading, calibration-free background and detection settings.
    fwhm : float
        PSF FWHM of injected sources [px]; 0: the header's PSF_FWHM, else measured from the stars.

    Returns
    -------
    list of (ccd, frames, static sources)
    """
    refs = scan_inputs(find_inputs(inputs), config.io)
    exposures = group_exposures(refs, config.io, min_exposures=3)
    ccds = common_ccds(exposures)
    out = []
    for ccd in ccds:
        frames, tables = [], []
        for e in exposures:
            ref = next(r for r in e.ccds if r.ccd == ccd)
            table, info = process_ccd(ref, config)
            if info.get("skipped"):  # (all NaN, all flagged, RMS 0: was said to have no usable WCS, campaign 31)
                raise InputError(f"{ref.path}: CCD {ccd} has no usable pixels ({info['skipped']}); sequences need "
                                 "every frame")
            wcs = wcs_from_header_string(info.get("wcs_header", ""))
            if wcs is None:
                raise InputError(f"{ref.path}: CCD {ccd} has no usable WCS; sequences need one per frame")
            data, rms, gain = subtracted_image(ref, config, with_noise=True)
            psf_sigma = float(info.get("psf_sigma") or 0.75)
            f = fwhm or _header_fwhm(ref.path, ref.sci)
            frames.append(Frame(data=data, rms=rms, wcs=wcs, mjd=float(ref.mjd), exptime=float(ref.exptime),
                                gain=float(gain) if gain and gain > 0 else math.inf,
                                fwhm=f if math.isfinite(f) else psf_sigma / FWHM_TO_SIGMA,
                                zeropoint=float(info.get("zeropoint", math.nan)), name=f"{ref.path}[{ccd}]",
                                psf_sigma=psf_sigma))
            tables.append(table)
        out.append((str(ccd), frames, _static_sources(tables[0], tables[-1])))
    return out


def make_dataset(inputs, out, dataset_config, config: Config, *, positions: str | None = None,
                 progress: bool = False) -> dict:
    """Draw a dataset from every CCD sequence of ``inputs`` and write it to ``out`` (``ssodetect ml dataset``).

    Returns
    -------
    dict
        ``n_sequences``, ``n_positive``, ``shape`` and ``out``.
    """
    from ssodetect.ml.dataset import build_dataset, positions_on_frames, write_dataset

    # the dataset folder is replaced as a whole: never the scene's own folder (its frames were deleted)
    check_apart(out, [*inputs, *([positions] if positions else [])], owner="dataset")
    check_not_inside(out, inputs)  # (a dataset folder was written inside the scene's own folder)
    # (a trained model's folder, a run's, was replaced by the dataset: checked before the sequences are cut)
    check_directory_kind(out, "dataset")
    chosen = None
    if positions:
        check_regular_file(positions, "positions table")  # (a pipe would block for ever)
        try:
            chosen = Table.read(positions)
        except Exception as exc:  # noqa: BLE001 - any reader failure is a bad positions file
            raise InputError(f"{positions}: unreadable positions table ({reason(exc)})") from None
        if not {"ra", "dec"} <= set(chosen.colnames) or len(chosen) == 0:
            raise InputError(f"{positions}: the positions table needs rows with columns ra and dec [deg]")
        for name in ("ra", "dec"):  # an empty cell was read as 0 (a masked value's fill)
            empty = np.ma.getmaskarray(chosen[name])
            if empty.any():
                raise InputError(f"{positions}: row {int(np.argmax(empty)) + 1}: no {name} (an empty cell)")
        # (a column of two values per row was an internal error: campaign 34)
        chosen = Table({name: number_column(chosen, name, positions) for name in ("ra", "dec")})
        ra, dec = np.asarray(chosen["ra"]), np.asarray(chosen["dec"])
        bad = ~(np.isfinite(ra) & np.isfinite(dec) & (ra >= -360.0) & (ra <= 360.0) & (np.abs(dec) <= 90.0))
        if bad.any():
            k = int(np.argmax(bad))
            raise InputError(f"{positions}: row {k + 1}: ra {ra[k]:.10g}, dec {dec[k]:.10g} is no position on the sky "
                             "(ra within +-360 deg, |dec| <= 90 deg)")
    parts, described, skipped = [], [], []
    used = np.zeros(0 if chosen is None else len(chosen), bool)
    partly = used.copy()
    for k, (ccd, frames, sources) in enumerate(read_frames(inputs, config, fwhm=dataset_config.fwhm)):
        cfg = dataset_config.model_copy(update={"seed": dataset_config.seed + 1000 * k})
        mine = None
        if chosen is not None:  # each CCD draws at the chosen positions on 3 or more of its frames (all if fewer)
            count = positions_on_frames(frames, chosen["ra"], chosen["dec"])
            on = count >= min(3, len(frames))
            used |= on
            partly |= count > 0
            if not on.any():
                log.info("CCD %s: none of the %d chosen positions lies on 3 or more of its frames: no sequences "
                         "drawn there (dataset.json skipped_ccds)", ccd, len(chosen))
                skipped.append(ccd)
                continue
            mine = chosen[on]
        seqs, meta = build_dataset(frames, cfg, sources=sources, positions=mine)
        parts.append((seqs, meta))
        described.append({"ccd": ccd, "frames": [f.name for f in frames], "mjd": [f.mjd for f in frames],
                          "fwhm": [f.fwhm for f in frames], "n_static_sources": len(sources)})
        log.info("CCD %s: %d sequences (%d with movers)", ccd, len(meta), int(np.sum(meta["label"])))
    if chosen is not None and not used.all():  # (sequences there would be blank: refused before anything is written)
        k = int(np.argmin(used))
        where = "on fewer than 3 frames of any CCD" if partly[k] else "on no frame of the inputs"
        raise InputError(f"{positions}: row {k + 1}: ra {chosen['ra'][k]:.8g}, dec {chosen['dec'][k]:.8g} lies {where} "
                         f"({int((~used).sum())} of {len(chosen)} positions lie on fewer than 3 frames of any CCD)")
    write_dataset(out, parts, dataset_config, {"parts": described, "skipped_ccds": skipped,
                                               "software": {"ssodetect": __version__}}, progress=progress)
    n = sum(len(m) for _, m in parts)
    return {"n_sequences": n, "n_positive": int(sum(np.sum(m["label"]) for _, m in parts)),
            "shape": list(parts[0][0].images.shape[1:]), "out": str(out)}


def vet_objects(observations: Table, objects: Table, exposures: list, ccd_info: list, wcs_for, read_image,
                config: Config, timings: dict) -> tuple[Table, Table, Table]:
    """Score every object with the CNN on its track-following sequence; drop those below the threshold.

    Parameters
    ----------
    observations, objects : Table
        The run's results so far.
    exposures, ccd_info : list
        The run's exposures and per-CCD-exposure information (``psf_sigma``, ``zeropoint``).
    wcs_for : callable
        ``(exposure index, ccd) -> WCS`` (fitted or header; None without).
    read_image : callable
        ``CCDRef -> (background-subtracted data, rms, gain)``.
    timings : dict
        ``timings["ml"]`` is set to the stage's wall time [s].

    Returns
    -------
    observations, objects : Table
        Kept objects (with an ``ml_score`` column) and their observations.
    vetting : Table
        Every object scored (:data:`VETTING_COLUMNS`), kept or not.
    """
    from ssodetect.columns import describe, empty_table
    from ssodetect.ml.model import encode, load_model, score

    t_start = time.perf_counter()
    mc = config.ml
    vetting = empty_table(VETTING_COLUMNS)
    if len(objects) == 0:
        objects["ml_score"] = np.zeros(0)
        timings["ml"] = time.perf_counter() - t_start
        return observations, objects, vetting
    model, record = load_model(mc.model)
    arch = record["arch"]
    if int(arch["frames"]) != len(exposures):
        log.warning("ml: the model was trained on %d-frame sequences; this run has %d exposures", arch["frames"],
                    len(exposures))
    info_by = {(int(i["exposure"]), str(i["ccd"])): i for i in ccd_info}
    names = np.asarray(objects["object"]).astype(str)
    obs_names = np.asarray(observations["object"]).astype(str)
    obs_ccd = np.asarray(observations["ccd"]).astype(str)
    ccd_of = []
    for n in names:  # the CCD most of its observations are on
        seen = list(obs_ccd[obs_names == n])
        ccd_of.append(max(set(seen), key=seen.count) if seen else "")
    ccd_of = np.array(ccd_of, dtype="U32")
    scores = np.full(len(objects), np.nan)
    for ccd in sorted(set(ccd_of) - {""}):
        rows = np.nonzero(ccd_of == ccd)[0]
        frames = []
        for e in exposures:
            ref = next((r for r in e.ccds if r.ccd == ccd), None)
            wcs = wcs_for(e.index, ccd) if ref is not None else None
            if wcs is None:
                break
            data, rms, gain = read_image(ref)
            info = info_by.get((e.index, ccd), {})
            frames.append(Frame(data=data, rms=rms, wcs=wcs, mjd=float(e.mid_time.mjd), exptime=float(e.exptime),
                                gain=gain, psf_sigma=float(info.get("psf_sigma") or 0.75)))
        if len(frames) < len(exposures):
            log.info("ml: CCD %s not vetted (no WCS in some exposure); its %d objects kept", ccd, rows.size)
            continue
        sub = objects[rows]
        spec = track_grids(sub["ra"], sub["dec"], np.asarray(sub["mjd_ref"], float), sub["v_ra"], sub["v_dec"],
                           [f.mjd for f in frames], float(np.median([f.exptime for f in frames])), frames[0].scale,
                           size=int(arch["size"]), mode=arch["mode"])
        seqs = cut_sequences(frames, spec)
        sigma = float(np.median([f.psf_sigma for f in frames]))
        trail = np.asarray(sub["rate"], float) * float(np.median([f.exptime for f in frames])) / 3600.0 / frames[0].scale
        x = encode(seqs.images, seqs.masks, trail, np.full(rows.size, sigma), spec.stretch, mode=arch["mode"])
        scores[rows] = score(model, x, batch=mc.batch)
    vetted = np.isfinite(scores)
    kept = ~vetted | (scores >= mc.threshold)
    vetting = Table({"object": names, "kind": np.asarray(objects["kind"]).astype(str), "ccd": ccd_of,
                     "rate": np.asarray(objects["rate"], float), "mag": np.asarray(objects["mag"], float),
                     "ml_score": scores, "kept": kept})
    describe(vetting, VETTING_COLUMNS)
    objects = objects.copy()
    objects["ml_score"] = scores
    objects["ml_score"].description = "mover probability from the CNN vetting (NaN: not vetted)"
    drop = set(names[~kept])
    observations = observations[~np.isin(obs_names, list(drop))]
    objects = objects[kept]
    timings["ml"] = time.perf_counter() - t_start
    log.info("ml: %d objects scored, %d below %.2f removed", int(vetted.sum()), len(drop), mc.threshold)
    return observations, objects, vetting


def _check_unchanged(run_dir: Path) -> None:
    """Refuse to score a run whose input or calibration frames changed since it ran (their size or SHA-256 differs
    from its ``manifest.json``): the objects would be scored on other pixels (all scored 0 after another scene's
    frames were copied over the inputs)."""
    try:
        files = safejson.read(run_dir / "manifest.json").get("inputs")
    except (OSError, ValueError, AttributeError):
        return  # (an older run without a manifest's list: nothing to compare)
    for item in files if isinstance(files, list) else []:
        if not isinstance(item, dict) or item.get("role") not in ("input", "calibration"):
            continue
        path = str(item.get("path", ""))
        if not os.path.isfile(path):
            continue  # (reported where the inputs are found)
        if os.path.getsize(path) != item.get("bytes") or sha256_file(path) != item.get("sha256"):
            raise InputError(f"{path}: changed since the run in {run_dir} (its size or SHA-256 differs from the "
                             "run's manifest.json): run the pipeline again on these frames")


def score_run(run_dir, config: Config) -> Table:
    """Score the objects of a finished run (``ssodetect ml predict RUN_DIR``) with ``config.ml``'s model.

    The run's inputs, configuration (reading, calibration), per-CCD PSF and fitted WCS come from its
    ``provenance.json``, ``config.toml`` and ``astrometry.ecsv``; the run's files are not changed.

    Returns
    -------
    Table
        :data:`VETTING_COLUMNS`, one row per object.
    """
    from ssodetect.io import read_ccd

    run_dir = Path(run_dir)
    try:
        provenance = safejson.read(run_dir / "provenance.json")
        objects = Table.read(run_dir / "objects.ecsv", format="ascii.ecsv")
        observations = Table.read(run_dir / "observations.ecsv", format="ascii.ecsv")
    except (OSError, ValueError) as exc:
        raise InputError(f"{run_dir}: not a finished ssodetect run ({exc})") from None
    inputs = provenance.get("inputs") if isinstance(provenance, dict) else None
    if not isinstance(inputs, list) or not all(isinstance(p, str) for p in inputs):
        raise InputError(f"{run_dir / 'provenance.json'}: no list of the run's inputs")
    for path in inputs:
        if not os.path.exists(path):
            raise InputError(f"{run_dir}: the run's input {path} (as recorded in its provenance.json"
                             + (", relative to the directory the run was started in" if not os.path.isabs(path) else "")
                             + ") is not found")
    _check_unchanged(run_dir)
    refs = scan_inputs(find_inputs(inputs), config.io)
    refs, masters = build_calibration(refs, config)
    exposures = group_exposures(refs, config.io, min_exposures=config.link.min_detections)
    fitted = {}
    if (run_dir / "astrometry.ecsv").is_file():
        for row in Table.read(run_dir / "astrometry.ecsv", format="ascii.ecsv"):
            if str(row["status"]) == "ok" and str(row["wcs_header"]):
                fitted[(int(row["exposure"]), str(row["ccd"]))] = wcs_from_header_string(str(row["wcs_header"]))
    by_key = {(e.index, r.ccd): r for e in exposures for r in e.ccds}

    def wcs_for(exposure, ccd):
        key = (int(exposure), str(ccd))
        return fitted[key] if key in fitted else read_ccd(by_key[key], config.io).wcs

    _, _, vetting = vet_objects(observations, objects, exposures, provenance.get("ccds", []), wcs_for,
                                lambda ref: subtracted_image(ref, config, masters.get(ref.ccd), with_noise=True),
                                config, {})
    return vetting
