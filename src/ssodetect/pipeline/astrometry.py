"""The astrometric step: solve every CCD against the reference catalogue, then re-project.

Tasks are per CCD (all its exposures together, for the joint fit), so an
executor can spread them over workers.  :func:`apply_solutions` replaces the
sky coordinates, their uncertainties and the magnitudes of the detections with
those of the refined WCS and zero point; detections of a CCD exposure that could
not be solved are dropped (or keep their header WCS, per ``on_failure``).
"""
from __future__ import annotations

import logging
import math
import re
import warnings
from pathlib import Path
from collections import defaultdict

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from ssodetect.astrometry.match import PatternIndex
from ssodetect.astrometry.register import (
    Registration,
    header_disagreement,
    header_pointing,
    nominal_pixel_scale,
    register_to_reference,
    registration_summary,
    relative_wcs,
)
from ssodetect.astrometry.solve import SOLUTION_COLUMNS, ExposureSolution, ExposureStars, pixel_scale, solve_ccd, star_like
from ssodetect.astrometry.zeropoint import zeropoint_doubt
from ssodetect.columns import describe, empty_table
from ssodetect.config import Config
from ssodetect.errors import ConfigError, InputError
from ssodetect.io.headers import fits_text, wcs_frame_problem, wcs_from_header_string
from ssodetect.pipeline.ccd import cut_direction, set_sky_positions
from ssodetect.streaks import trail_on_sky
from ssodetect.streaks.field import StarTrail

__all__ = [
    "load_reference_wcs",
    "place_on_reference",
    "register_unplaced",
    "SolveTask",
    "warn_unsolved",
    "astrometry_tasks",
    "reference_stars",
    "record_star_trails",
    "star_trail_summary",
    "warn_doubtful_zeropoints",
    "warn_outliers",
    "warn_tracking",
    "apply_solutions",
    "solution_table",
    "wcs_from_header_string",
    "refined_header",
    "write_refined_headers",
    "header_stem",
    "check_header_stems",
]

log = logging.getLogger(__name__)


class SolveTask:
    """Picklable per-CCD astrometric task bound to a reference catalogue and configuration."""

    def __init__(self, reference: Table, config: Config):
        self.reference = reference
        self.config = config

    def __call__(self, task) -> list[ExposureSolution]:
        ccd, items = task
        for item in items:
            if isinstance(item.header_wcs, str):
                item.header_wcs = wcs_from_header_string(item.header_wcs)
        # a failure here may still be rescued from the CCD's other exposures or the exposure's other CCDs: said
        # (a warning) only once it is final (:func:`ssodetect.pipeline.run._solve`)
        return solve_ccd(ccd, items, self.reference, self.config.astrometry, quiet=True)


def warn_unsolved(solutions: list[ExposureSolution], files: dict | None = None) -> int:
    """A warning for every CCD exposure still unsolved once the rescues were tried (with everything tried, in its
    reason; ``files``: ``(exposure, ccd) -> path`` names its file); those solved alone or rescued say nothing.
    Returns how many."""
    failed = [sol for sol in solutions if not sol.ok]
    for sol in failed:
        where = f"{files[(sol.exposure, sol.ccd)]}: " if files and (sol.exposure, sol.ccd) in files else ""
        log.warning("%sCCD %s exposure %d: astrometric solution failed: %s", where, sol.ccd, sol.exposure, sol.reason)
    return len(failed)


def reference_stars(table: Table, info: dict, config: Config) -> np.ndarray:
    """Which detections of one CCD exposure are its reference stars: point sources, or on a trailed exposure
    (``info["star_trail"]``, see :func:`ssodetect.streaks.field.star_trail`) the trails of the stars' vector."""
    ast = config.astrometry
    st = info.get("star_trail")
    trailed = bool(st["used"]) if st else ast.trailed_stars is True
    chosen = star_like(table, ast.min_snr, trailed=trailed)
    if trailed and st and st["trailed"]:  # (movers' trails are not the stars')
        chosen &= _star_trail(st).agrees(table["length"], table["theta"])
    return chosen


def _star_trail(st: dict) -> StarTrail:
    return StarTrail(**{k: st[k] for k in StarTrail.__dataclass_fields__ if k in st})


def record_star_trails(solutions: list, trails: dict) -> None:
    """Beside each solution (in place), what its exposure's stars' trails were (``trails``: ``(exposure, ccd) ->
    info["star_trail"]``); a failed exposure whose bright sources are mostly trails sharing no one vector says so
    in its reason."""
    for sol in solutions:
        st = trails.get((sol.exposure, sol.ccd))
        if not st:
            continue
        sol.stars_trailed, sol.star_trail_length, sol.star_trail_angle = bool(st["used"]), st["length"], st["angle"]
        if not sol.ok and not st["used"] and _star_trail(st).incoherent:
            sol.reason = (f"{sol.reason}; {st['n_trails']} of its {st['n_bright']} bright compact sources are trails "
                          f"but at most {st['n_agree']} share one (no common drift: wind shake?)")


def warn_doubtful_zeropoints(solutions: list, tasks: list, ccd_info: list) -> None:
    """One warning for the solved CCD exposures whose fitted zero point is doubtful
    (:func:`ssodetect.astrometry.zeropoint.zeropoint_doubt`), naming the first."""
    info_by = {(ref.exposure, ref.ccd): (ref, info) for ref, info in zip(tasks, ccd_info)}
    doubts = []
    for sol in solutions:
        ref, info = info_by.get((sol.exposure, sol.ccd), (None, {}))
        header = info.get("zeropoint") if info.get("zeropoint_source") == "header" else None
        why = zeropoint_doubt(sol.zeropoint, sol.zeropoint_err, sol.n_zeropoint,
                              float(header) if header is not None else None, sol.n_zeropoint_usable) if sol.ok else None
        if why is not None:
            doubts.append((ref, sol, why))
    if doubts:
        ref, sol, why = doubts[0]
        log.warning("%d of %d solved CCD exposures have a doubtful zero point (their magnitudes with it); first, %s CCD "
                    "%s exposure %d: %s", len(doubts), sum(s.ok for s in solutions), ref.path if ref else "?", sol.ccd,
                    sol.exposure, why)


def warn_outliers(doubted: dict, paths: dict) -> None:
    """Say which CCD exposures' solutions were doubted (:func:`ssodetect.astrometry.field.outlier_solutions`):
    those solved again from the others at info level, those kept as they were in one warning."""
    replaced = [(k, why) for k, (why, ok) in sorted(doubted.items()) if ok]
    kept = [(k, why) for k, (why, ok) in sorted(doubted.items()) if not ok]
    for (e, ccd), why in replaced:
        log.info("%s CCD %s exposure %d: %s; solved again from the CCD's other exposures and the exposure's other "
                 "CCDs", paths.get((e, ccd), "?"), ccd, e, why)
    if kept:
        (e, ccd), why = kept[0]
        log.warning("%d CCD exposure(s) with a doubtful solution that could not be solved otherwise (kept); first, %s "
                    "CCD %s exposure %d: %s", len(kept), paths.get((e, ccd), "?"), ccd, e, why)


def warn_tracking(ccd_info: list, tasks: list) -> None:
    """One warning for the CCD exposures whose header's tracking rate contradicts the stars' measured trails, and one
    for those whose rate is no number (each naming the first, with how many there are)."""
    for field, what in (("disagreement", "contradicts the measured star trails (the measured trails are used)"),
                        ("problems", "cannot be read")):
        hits = []
        for info, ref in zip(ccd_info, tasks):
            said = ((info.get("star_trail") or {}).get("tracking") or {}).get(field)
            if said:
                hits.append((ref, said if isinstance(said, str) else "; ".join(said)))
        if hits:
            ref, said = hits[0]
            log.warning("%d CCD exposure(s) whose header's tracking rate %s; first, %s CCD %s: %s", len(hits), what,
                        ref.path, ref.ccd, said)


def star_trail_summary(ccd_info: list) -> str:
    """One line on the CCD exposures found trailed, and on the headers' tracking rates compared with the stars'
    trails (empty when neither)."""
    trailed = [i for i in ccd_info if (i.get("star_trail") or {}).get("used")]
    tracked = [i["star_trail"]["tracking"] for i in ccd_info
               if ((i.get("star_trail") or {}).get("tracking") or {}).get("keys")]
    parts = []
    if trailed:
        lengths = [float(i["star_trail"]["length"]) for i in trailed if np.isfinite(i["star_trail"]["length"])]
        how = "found by auto" if all(i["star_trail"].get("mode") == "auto" for i in trailed) else "as configured"
        parts.append(f"stars trailed in {len(trailed)} of {len(ccd_info)} CCD exposures ({how}"
                     + (f"; {min(lengths):.1f}-{max(lengths):.1f} px" if lengths else "") + "): their trail centres "
                     "are the reference stars there")
    if tracked:
        judged = [t for t in tracked if t.get("agrees") is not None]
        keys = ", ".join(sorted({str(t["keys"]) for t in tracked}))
        parts.append(f"the headers' tracking rate ({keys}) agrees with the measured star trails in "
                     f"{sum(bool(t['agrees']) for t in judged)} of {len(judged)} CCD exposures compared "
                     f"({len(tracked) - len(judged)} not compared); the measured trails are used")
    return "; ".join(parts)


def astrometry_tasks(results, refs, config: Config) -> list[tuple[str, list[ExposureStars]]]:
    """Group per-CCD detection results into one task per CCD (its exposures in time order).

    Parameters
    ----------
    results : list of (Table, dict)
        Output of :func:`ssodetect.pipeline.ccd.process_ccd` for each of ``refs``.
    refs : list of CCDRef
    config : Config
    """
    groups: dict[str, list[ExposureStars]] = defaultdict(list)
    for (table, info), ref in zip(results, refs):
        if "shape" not in info:
            continue  # skipped CCD (all masked)
        sel = table[reference_stars(table, info, config)] if len(table) else table
        sources = Table({name: np.asarray(sel[name], float) for name in ("x", "y", "x_err", "y_err", "flux", "flux_err")})
        sources.sort("flux", reverse=True)
        zp = info.get("zeropoint") if info.get("zeropoint_source") == "header" else None
        groups[ref.ccd].append(
            ExposureStars(
                exposure=ref.exposure, mjd=ref.mjd, exptime=ref.exptime, shape=tuple(info["shape"]),
                header_wcs=info.get("wcs_header", ""), sources=sources, zeropoint=zp,
            )
        )
    return [(ccd, sorted(items, key=lambda it: it.exposure)) for ccd, items in groups.items()]


def apply_solutions(table: Table, solution: ExposureSolution | None, header_wcs: WCS | None, config: Config) -> Table:
    """Detections of one CCD exposure re-projected through its solution.

    ``ra, dec`` through the fitted WCS; ``ra_err, dec_err`` combine the centroid
    error and the solution's own uncertainty (``wcs_error``) in quadrature (``sky_err_shared``: the
    part of it the CCD's other exposures share, ``wcs_error_shared``);
    ``mag`` uses the fitted zero point when there is one.  Without a solution:
    an empty table (``on_failure='drop'`` or no header WCS) or the table as it is.
    """
    if solution is None or not solution.ok:
        if config.astrometry.on_failure == "header" and header_wcs is not None:
            return table
        return table[:0]
    out = table.copy()
    if len(out) == 0:
        return out
    wcs = solution.wcs
    x, y = np.asarray(out["x"], float), np.asarray(out["y"], float)
    ra, dec = wcs.all_pix2world(x, y, 0)
    scale = pixel_scale(wcs)
    out["ra"] = ra
    out["dec"] = dec
    out["wcs"] = "fit"
    out["pixel_scale"] = scale
    own = "own_length" in out.colnames  # (the source's own motion: on a trailed exposure its trail less the drift)
    out["trail_arcsec"], out["trail_pa"] = trail_on_sky(wcs, x, y, out["own_length" if own else "length"],
                                                        out["own_theta" if own else "theta"])
    out["cut_pa"] = cut_direction(wcs, out)
    out["trail_arcsec_err"] = np.asarray(out["length_err"], float) * scale
    out["trail_pa_err"] = np.degrees(np.asarray(out["theta_err"], float))
    out["ra_err"] = np.hypot(np.asarray(out["x_err"], float) * scale, solution.wcs_error)
    out["dec_err"] = np.hypot(np.asarray(out["y_err"], float) * scale, solution.wcs_error)
    out["sky_err_shared"] = np.full(len(out), solution.wcs_error_shared)
    if math.isfinite(solution.zeropoint):
        flux = np.asarray(out["flux"], float)
        exptime = np.asarray(out["exptime"], float)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["mag"] = np.where(flux > 0, solution.zeropoint - 2.5 * np.log10(flux / np.maximum(exptime, 1e-9)), np.nan)
        out["mag_err"] = np.hypot(np.asarray(out["mag_err"], float), solution.zeropoint_err)
    return out


def solution_table(solutions: list[ExposureSolution]) -> Table:
    """One row per CCD exposure (:data:`SOLUTION_COLUMNS` plus ``wcs_header``); every column when empty."""
    columns = SOLUTION_COLUMNS + [("wcs_header", "U", "", "fitted WCS as FITS header cards (empty when failed)")]
    if not solutions:
        return empty_table(columns)
    rows = []
    for sol in sorted(solutions, key=lambda s: (s.exposure, s.ccd)):
        row = sol.row()
        row["wcs_header"] = sol.wcs.to_header_string(relax=True) if sol.wcs is not None else ""
        rows.append(row)
    table = Table(rows=rows, names=[c[0] for c in columns])
    describe(table, columns)
    return table


_WCS_KEY = re.compile(
    r"^(WCSAXES|CTYPE\d|CUNIT\d|CRVAL\d|CRPIX\d|CDELT\d|CROTA\d|CD\d_\d|PC\d_\d|PV\d_\d+|PS\d_\d+|"
    r"[AB]P?_\d+_\d+|[AB]P?_ORDER|[AB]P?_DMAX|LONPOLE|LATPOLE|RADESYS|EQUINOX|EPOCH|MJDREF|WCSNAME)$"
)


def refined_header(header: fits.Header, solution: ExposureSolution | None) -> fits.Header:
    """Copy of ``header`` with its WCS replaced by the solution's and the fit quality recorded.

    Without a successful solution the header is returned unchanged but for an
    ``SSOASTR`` keyword saying why.
    """
    out = header.copy()
    if solution is None or not solution.ok:
        reason = "not solved" if solution is None else solution.reason
        out["SSOASTR"] = ("failed", "ssodetect astrometry: see HISTORY")
        out.add_history(fits_text(f"ssodetect astrometry failed: {reason}", None))
        return out
    for key in [k for k in out.keys() if _WCS_KEY.match(k)]:
        del out[key]
    out.extend(solution.wcs.to_header(relax=True), update=True)
    out["SSOASTR"] = ("ok", f"ssodetect astrometry ({solution.method})")
    out["ASTRRMS1"] = (round(solution.rms_ra / 3600.0, 10), "[deg] astrometric residual rms, RA*cos(dec)")
    out["ASTRRMS2"] = (round(solution.rms_dec / 3600.0, 10), "[deg] astrometric residual rms, Dec")
    out["ASTRNSTR"] = (solution.n_stars, "reference stars used")
    if math.isfinite(solution.zeropoint):
        out["MAGZERO"] = (round(solution.zeropoint, 4), "fitted zero point, mag for 1 ADU/s")
        out["MAGZERR"] = (round(solution.zeropoint_err, 4), "zero-point uncertainty [mag]")
    return out


def header_stem(path) -> str:
    """The name ``<stem>.head`` / ``<stem>.fits`` of an input file's refined headers: its file name less a FITS
    suffix (``.fits``, ``.fit``, ``.fts``, with ``.fz``/``.gz``)."""
    stem = Path(path).name
    for suffix in (".fz", ".gz", ".fits", ".fit", ".fts"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem


def check_header_stems(paths) -> None:
    """Refuse (``InputError``, naming both files) inputs whose refined headers would share a name: one solution
    would overwrite the other (campaign 31: ``d/a.fits`` and ``d/sub/a.fits`` wrote one ``a.head`` for two
    exposures, the command saying all were solved)."""
    seen: dict[str, str] = {}
    for path in paths:
        stem = header_stem(path)
        if stem in seen and seen[stem] != str(path):
            raise InputError(f"{path}: its refined header would be {stem}.head, as that of {seen[stem]}; input file "
                             "names must differ (rename one, or solve them apart)")
        seen[stem] = str(path)


def write_refined_headers(path: Path, solutions, stage, formats) -> None:
    """Write ``<stem>.head`` and/or ``<stem>.fits`` for one input file into an output stage.

    Parameters
    ----------
    path : Path
        Input FITS file (read only).
    solutions : list of (CCDRef, ExposureSolution or None)
        The science extensions of the file, in HDU order.
    stage : OutputStage
    formats : sequence of {"head", "fits"}
    """
    stem = header_stem(path)
    with fits.open(path, memmap=False) as hdul:
        if "head" in formats:
            blocks = []
            for ref, sol in solutions:
                head = refined_header(fits.Header(), sol)
                blocks.append("\n".join(str(card) for card in head.cards) + "\nEND     \n")
            stage.file(f"{stem}.head").write_text("".join(blocks))
        if "fits" in formats:
            copy = fits.HDUList([hdu.copy() for hdu in hdul])
            for ref, sol in solutions:
                copy[ref.sci].header = refined_header(copy[ref.sci].header, sol)
            copy.writeto(stage.file(f"{stem}.fits"))


def load_reference_wcs(path: str) -> WCS:
    """The celestial WCS in a FITS file (first HDU with one) or a text header file.

    Raises
    ------
    ConfigError
        Unreadable file or no celestial WCS in it (names the file).
    """
    try:
        with open(path, "rb") as handle:
            start = handle.read(2880)
        size = Path(path).stat().st_size
        with warnings.catch_warnings():
            # astropy complains card by card about a file that is no header (/etc/passwd: 56 lines)
            warnings.simplefilter("ignore")
            if start.startswith(b"SIMPLE  =") and size % 2880 == 0:
                with fits.open(path) as hdul:
                    headers = [hdu.header.copy() for hdu in hdul]
            else:  # a text header, one card per line (SCAMP .head)
                headers = [fits.Header.fromtextfile(path)]
    except (OSError, ValueError) as exc:
        said = " ".join(str(exc).split())[:200]
        raise ConfigError(f"{path}: cannot read the reference WCS ({said})") from None
    for header in headers:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                wcs = WCS(header, relax=True)
            except Exception:  # astropy raises many exception types for a header that is no WCS
                continue
        if wcs.has_celestial:
            problem = wcs_frame_problem(wcs.celestial)
            if problem:
                raise ConfigError(f"{path}: the reference WCS is unusable: {problem}")
            return wcs.celestial
    raise ConfigError(f"{path}: no celestial WCS in the reference WCS file")


def _reference_position(members: list[int], tasks: list, name: str) -> int:
    """Index in ``members`` of the frame named ``name`` (file name), or of the first one in time."""
    if not name:
        return int(np.argmin([tasks[k].mjd for k in members]))
    for pos, k in enumerate(members):
        if Path(tasks[k].path).name == name:
            return pos
    raise ConfigError(f"{name}: reference_frame is not among the frames without WCS")


def place_on_reference(table: Table, reg: Registration, wcs, label: str) -> Table:
    """Sky columns of a registered frame's detections through the reference frame's WCS.

    Positions, trail directions and lengths are mapped onto the reference frame's pixels by the
    registration and go through ``wcs`` there (exact for any WCS, SIP included); the table keeps
    its own pixel positions.
    """
    moved = table.copy()
    xy = reg.apply(np.column_stack([np.asarray(table["x"], float), np.asarray(table["y"], float)]))
    moved["x"], moved["y"] = xy[:, 0], xy[:, 1]
    for name_l, name_t in (("length", "theta"), ("own_length", "own_theta")):
        if name_l not in table.colnames:
            continue
        theta = np.asarray(table[name_t], float)
        axis = np.column_stack([np.cos(theta), np.sin(theta)]) @ reg.matrix.T
        moved[name_t] = np.arctan2(axis[:, 1], axis[:, 0])
        moved[name_l] = np.asarray(table[name_l], float) * np.hypot(axis[:, 0], axis[:, 1])
    theta = np.asarray(table["theta"], float)
    axis = np.column_stack([np.cos(theta), np.sin(theta)]) @ reg.matrix.T
    if "length_err" in table.colnames:
        moved["length_err"] = np.asarray(table["length_err"], float) * np.hypot(axis[:, 0], axis[:, 1])
    set_sky_positions(moved, wcs, label)
    out = table.copy()
    for name in ("ra", "dec", "trail_arcsec", "trail_pa", "trail_arcsec_err", "trail_pa_err", "cut_pa", "wcs",
                 "pixel_scale", "ra_err", "dec_err", "sky_err_shared"):
        out[name] = moved[name]
    return out


def _static_sources(table: Table, config: Config) -> np.ndarray:
    """Pixel positions ``(n, 2)`` of a frame's sources fixed on the sky (stars and galaxies), brightest first."""
    kind = np.asarray(table["kind"])
    static = (kind == "point") | (kind == "extended")
    if "stars_trailed" in table.colnames:  # (on a trailed exposure the stars are trails)
        static |= (kind == "trail") & np.asarray(table["stars_trailed"], bool)
    sel = np.nonzero(static & ~np.asarray(table["near_mask"], bool)
                     & (np.asarray(table["snr"], float) >= 0.5 * config.astrometry.min_snr))[0]
    sel = sel[np.argsort(-np.asarray(table["flux"], float)[sel])]
    return np.column_stack([np.asarray(table["x"], float)[sel], np.asarray(table["y"], float)[sel]])


#: A header WCS that places a frame's stars farther than this [arcsec] (or 5 registration errors) from where the
#: registration onto another exposure of its CCD puts them is replaced by that registration (no reference
#: catalogue): linking needs the exposures on one sky to ~0.1", headers are often off by arcseconds.
HEADER_TOLERANCE = 0.2
#: Fewest registered stars for a header to be replaced by a registration.
MIN_CHECK_STARS = 10
#: Frames tried as the base of a CCD's header check when no frame is solved on the catalogue.
MAX_BASE_TRIALS = 3


def _header_checks(base: int, members: list, stars: dict, tasks: list, placed_wcs: dict, label: dict,
                   config: Config) -> dict:
    """Every frame of ``members`` but ``base`` (and frames solved on the catalogue) registered onto ``base``:
    k -> ``header_check`` entry (``status`` ok | replaced | not registered, ``reference``, and for registered frames
    ``disagreement_arcsec``, ``stars``, ``rms_px`` and the ``registration``)."""
    base_ref = tasks[base]
    ccd = base_ref.ccd
    base_wcs = placed_wcs[(base_ref.exposure, ccd)]
    index = PatternIndex(stars[base], n_ref=40)
    scale = pixel_scale(base_wcs)
    checks = {}
    for k in members:
        if k == base or label[k] == "fit":
            continue
        ref = tasks[k]
        # no overlap test through the headers: a header 0.1 deg off says the frames do not overlap; the pattern match
        # does not need it (frames that really do not overlap do not register)
        reg = register_to_reference(stars[k], stars[base], index=index,
                                    match_radius=max(2.0, config.astrometry.match_radius / scale))
        if reg is None or reg.n_stars < MIN_CHECK_STARS:
            checks[k] = {"status": "not registered", "reference": base_ref.path,
                         "stars": 0 if reg is None else reg.n_stars}
            continue
        off = header_disagreement(reg, placed_wcs[(ref.exposure, ccd)], base_wcs, stars[k][:50])
        # the registration's own error is its stars' scatter over the root of their number (NEOSSat: 0.2 px over 500
        # stars); five times the scatter itself, 1 px of 3", had kept headers 3" apart on one sky, and every star
        # moved from one exposure to the next
        tolerance = max(HEADER_TOLERANCE, 5.0 * reg.rms * scale / math.sqrt(max(reg.n_stars, 1)))
        checks[k] = {"status": "ok" if off <= tolerance else "replaced", "reference": base_ref.path,
                     "disagreement_arcsec": off, "stars": reg.n_stars, "rms_px": reg.rms, "registration": reg}
    return checks


def align_header_wcs(tables: list[Table], tasks: list, infos: list[dict], config: Config, placed_wcs: dict) -> list[Table]:
    """Check every CCD exposure left on its header WCS (no reference catalogue, or not solved on it) against
    the other exposures of its CCD, and place a frame whose header disagrees through a registration onto the
    CCD's solved frame (else its frame with the most sources) (``wcs = "frame"``).

    Each frame's static sources are registered (affine, pattern match) onto the base frame; where the header
    WCSs put the frame's stars more than :data:`HEADER_TOLERANCE` (or 5 registration rms) from where the
    registration and the base's WCS put them, the header is wrong relative to the base: the frame's sky
    positions are recomputed through the base (a warning names the file and the disagreement).  The sky is
    then the base frame's header sky: relative positions are right, absolute ones only as good as that header.
    Without a solved frame the base is the frame whose header agrees with the most others (up to
    :data:`MAX_BASE_TRIALS` frames tried): one wrong header does not move the right ones.
    ``infos`` gain a ``header_check`` entry.  Returns the tables in the same order.
    """
    out = list(tables)
    by_ccd: dict[str, list[int]] = defaultdict(list)
    label = {}
    for k, (table, ref) in enumerate(zip(tables, tasks)):
        labels = set(np.asarray(table["wcs"]).tolist()) if len(table) else set()
        if len(table) and placed_wcs.get((ref.exposure, ref.ccd)) is not None and len(labels) == 1 and \
                labels <= {"header", "fit"}:
            by_ccd[ref.ccd].append(k)
            label[k] = labels.pop()
    for ccd, members in by_ccd.items():
        if len(members) < 2 or all(label[k] == "fit" for k in members):
            continue
        stars = {k: _static_sources(tables[k], config) for k in members}
        solved = [k for k in members if label[k] == "fit"]  # a frame solved on the catalogue is the best base
        by_stars = sorted(solved or members, key=lambda k: -len(stars[k]))
        base, checks = by_stars[0], _header_checks(by_stars[0], members, stars, tasks, placed_wcs, label, config)
        if not solved:
            # headers only: the base is the frame whose header most others agree with (one header 30" off must not
            # move the good ones); the frames disagreeing with the first choice are tried, most stars first
            agreeing = 1 + sum(c["status"] == "ok" for c in checks.values())
            others = sorted((k for k, c in checks.items() if c["status"] == "replaced"), key=lambda k: -len(stars[k]))
            for k in others[:MAX_BASE_TRIALS - 1]:
                if 2 * agreeing > len(members):
                    break
                trial = _header_checks(k, members, stars, tasks, placed_wcs, label, config)
                count = 1 + sum(c["status"] == "ok" for c in trial.values())
                if count > agreeing:
                    base, checks, agreeing = k, trial, count
        base_ref = tasks[base]
        base_wcs = placed_wcs[(base_ref.exposure, ccd)]
        for k, check in checks.items():
            ref = tasks[k]
            reg = check.pop("registration", None)
            infos[k]["header_check"] = check
            if check["status"] == "not registered":
                # nothing confirms this header: a wrong one (sparse field, no catalogue) would lose its detections
                log.warning("%s CCD %s (exposure %d): its header WCS could not be checked against exposure %d "
                            "(%d stars registered, %d needed): its positions rely on the header", ref.path, ccd,
                            ref.exposure, base_ref.exposure, check["stars"], MIN_CHECK_STARS)
            if check["status"] != "replaced":
                continue
            out[k] = place_on_reference(tables[k], reg, base_wcs, "frame")
            log.warning("%s CCD %s (exposure %d): its header WCS puts the stars %.2f\" from where exposure %d's %s "
                        "and the stars' registration put them; placed through exposure %d's WCS (%d stars, rms %.3f px)",
                        ref.path, ccd, ref.exposure, check["disagreement_arcsec"], base_ref.exposure,
                        "fitted WCS" if label[base] == "fit" else "header", base_ref.exposure, check["stars"],
                        check["rms_px"])
    return out


def register_unplaced(tables: list[Table], tasks: list, infos: list[dict], config: Config,
                      placed_wcs: dict | None = None) -> list[Table]:
    """Place CCD tables that have no sky coordinates by registering them onto other frames.

    Tables whose detections all have ``wcs == "none"`` are grouped by CCD.  When other exposures of
    the CCD are on the sky (``placed_wcs``: (exposure, ccd) -> the WCS their positions went through),
    each unplaced frame is registered onto the placed one with the most sources and goes through its
    WCS (``wcs = "frame"``: real sky positions; a broken header of one exposure among good ones).
    Otherwise the frame with the most stars is the reference, every other one is registered onto it
    (:func:`ssodetect.astrometry.register.register_to_reference`) and its positions computed
    through :func:`ssodetect.astrometry.register.relative_wcs` (``wcs = "relative"``), or through
    the WCS given in ``[astrometry] reference_wcs`` for ``reference_frame`` (``wcs = "user"``).
    Frames that cannot be registered are emptied (a warning says which and why): nothing is linked
    across a frame that is not on the same sky as the others.  ``infos`` gain a ``registration``
    entry.  Returns the tables in the same order.
    """
    out = list(tables)
    placed_wcs = placed_wcs or {}
    groups: dict[str, list[int]] = {}
    for k, (table, ref) in enumerate(zip(tables, tasks)):
        if len(table) and np.all(np.asarray(table["wcs"]) == "none"):
            groups.setdefault(ref.ccd, []).append(k)
    for ccd, members in groups.items():
        placed = [k for k, ref in enumerate(tasks) if ref.ccd == ccd and k not in members and len(tables[k])
                  and placed_wcs.get((ref.exposure, ccd)) is not None]
        if placed:
            _register_onto_placed(tables, out, tasks, infos, members, placed, placed_wcs, config)
            continue
        if not config.astrometry.register_frames:
            continue
        stars = [_static_sources(tables[k], config) for k in members]
        user_wcs = load_reference_wcs(config.astrometry.reference_wcs) if config.astrometry.reference_wcs else None
        if user_wcs is not None:
            ref_pos = _reference_position(members, tasks, config.astrometry.reference_frame)
        else:
            ref_pos = int(np.argmax([len(s) for s in stars]))
        ref_task = tasks[members[ref_pos]]
        header = fits.getheader(ref_task.path, ref_task.sci)
        pointing = header_pointing(header) or (0.0, 0.0)
        scale = nominal_pixel_scale(header, config.astrometry.register_pixel_scale)
        shape = tuple(infos[members[ref_pos]].get("shape", (0, 0)))
        grid, label = (user_wcs, "user") if user_wcs is not None else (relative_wcs(shape, pointing, scale), "relative")
        if user_wcs is not None:
            scale = float(np.sqrt(abs(np.linalg.det(user_wcs.celestial.pixel_scale_matrix)))) * 3600.0
        index = PatternIndex(stars[ref_pos], n_ref=40)
        regs = []
        for pos, k in enumerate(members):
            if pos == ref_pos:
                reg = Registration(np.eye(2), np.zeros(2), len(stars[pos]), 0.0)
            else:
                reg = register_to_reference(stars[pos], stars[ref_pos], index=index,
                                            match_radius=max(2.0, config.astrometry.match_radius / scale))
            regs.append(reg)
            if reg is None:
                log.warning("%s CCD %s: not registered to %s (%d stars): dropped", tasks[k].path, ccd,
                            ref_task.path, len(stars[pos]))
                infos[k]["registration"] = {"status": "failed", "reference": ref_task.path, "stars": len(stars[pos])}
                out[k] = tables[k][:0]
                continue
            out[k] = place_on_reference(tables[k], reg, grid, label)
            infos[k]["registration"] = {"status": "ok", "reference": ref_task.path, "stars": reg.n_stars,
                                        "rms_px": reg.rms, "shift_px": [float(v) for v in reg.offset]}
        what = (f"sky positions through {config.astrometry.reference_wcs}" if user_wcs is not None
                else "relative positions, no astrometry")
        log.info("CCD %s without WCS: %s (reference %s; %s, %.3f\"/px)", ccd, registration_summary(regs),
                 ref_task.path, what, scale)
    return out


def _register_onto_placed(tables, out, tasks, infos, members, placed, placed_wcs, config: Config) -> None:
    """Frames of a CCD without sky positions registered onto its frame on the sky with the most sources."""
    base = max(placed, key=lambda k: len(tables[k]))
    base_ref = tasks[base]
    wcs = placed_wcs[(base_ref.exposure, base_ref.ccd)]
    base_stars = _static_sources(tables[base], config)
    index = PatternIndex(base_stars, n_ref=40)
    scale = pixel_scale(wcs)
    for k in members:
        ref = tasks[k]
        why = infos[k].get("wcs_problem") or "no WCS"
        stars = _static_sources(tables[k], config)
        reg = register_to_reference(stars, base_stars, index=index,
                                    match_radius=max(2.0, config.astrometry.match_radius / scale))
        if reg is None:
            log.warning("%s CCD %s (exposure %d): header WCS unusable (%s) and not registered onto exposure %d "
                        "(%d sources): its detections are not used", ref.path, ref.ccd, ref.exposure, why,
                        base_ref.exposure, len(stars))
            infos[k]["registration"] = {"status": "failed", "reference": base_ref.path, "stars": len(stars)}
            out[k] = tables[k][:0]
            continue
        out[k] = place_on_reference(tables[k], reg, wcs, "frame")
        infos[k]["registration"] = {"status": "ok", "reference": base_ref.path, "stars": reg.n_stars,
                                    "rms_px": reg.rms, "shift_px": [float(v) for v in reg.offset]}
        log.warning("%s CCD %s (exposure %d): header WCS unusable (%s); registered onto exposure %d (%d sources, "
                    "rms %.3f px) and placed through its WCS", ref.path, ref.ccd, ref.exposure, why, base_ref.exposure,
                    reg.n_stars, reg.rms)
