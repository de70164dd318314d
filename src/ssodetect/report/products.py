"""The report products of a run, made from its output directory alone.

``write_reports`` reads ``observations.ecsv``, ``objects.ecsv``, ``provenance.json`` (its
``report_context``: station, band, seeing and spacecraft position per exposure, pixel scale),
``astrometry.ecsv``, ``known.ecsv``, ``vetting.ecsv``, ``evaluation.ecsv``, ``cutouts.fits`` and
``overview.fits`` when present, and writes ``observations.psv`` and ``observations.xml`` (ADES),
``observations.mpc`` (80-column), ``objects.reg`` (DS9/CARTA regions) and ``report.html`` (with the observing
context and plots).  ``ssodetect report OUTDIR`` runs it on a finished run.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
from astropy.table import Table

from ssodetect import safejson
from ssodetect.config import Config
from ssodetect.errors import InputError
from ssodetect.report.ades import ades_block, format_psv, format_xml
from ssodetect.report.cutouts import read_cutouts, read_overview
from ssodetect.report.context import header_rows
from ssodetect.report.html import render_report
from ssodetect.report.plots import astrometric_residuals, completeness_curves, mag_vs_rate, rate_vs_pa
from ssodetect.report.mpc80 import MPCRecord, format_mpc80, pack_number, pack_provisional
from ssodetect.report.regions import write_regions

log = logging.getLogger(__name__)

__all__ = ["REPORT_FILES", "EVALUATION_FILE", "write_reports", "mpc80_records", "mpc80_header"]

#: Completeness of a run against a simulation's truth, written by ``ssodetect evaluate`` beside the run's products.
EVALUATION_FILE = "evaluation.ecsv"
REPORT_FILES = ("observations.psv", "observations.xml", "observations.mpc", "objects.reg", "report.html")
_NET = {"Gaia3": "Gaia-DR3", "Gaia3E": "Gaia-EDR3", "Gaia2": "Gaia-DR2", "Gaia1": "Gaia-DR1", "UCAC4": "UCAC-4"}


def mpc80_records(observations: Table, *, station: str, band: str, identities: dict, positions: dict) -> list:
    """:class:`MPCRecord` per observation (space-based ones, ``positions`` given, on two lines)."""
    records = []
    for row in observations:
        name = str(row["object"])
        perm, prov = identities.get(name, ("", ""))
        number = pack_number(int(perm)) if perm.isdigit() else ""
        provisional = pack_provisional(prov) if prov and not number else ""
        exposure = int(row["exposure"])
        observer = positions.get(exposure)
        mag = float(row["mag"])
        records.append(MPCRecord(
            number=number, provisional=provisional or ("" if number else name[:7]), note2="S" if observer else "C",
            mjd=float(row["mjd"]), ra=float(row["ra"]), dec=float(row["dec"]),
            mag=mag if band and math.isfinite(mag) else float("nan"), band=band[:1] if math.isfinite(mag) else "",
            code=station, observer=tuple(observer) if observer else None, mag_decimals=2,
            source=str(row["file"]) if "file" in observations.colnames else "",
        ))
    return records


def mpc80_header(config: Config, station: str, observations: Table | None = None) -> dict:
    """COD/OBS/MEA/TEL/NET/ACK header lines from the configuration (NET: the rows' ``ast_cat`` when given,
    left out when it is unknown)."""
    rep = config.report
    header = {"COD": station}
    if rep.observers:
        header["OBS"] = ", ".join(rep.observers)
    header["MEA"] = ", ".join(rep.measurers) if rep.measurers else rep.submitter
    if rep.telescope_aperture > 0:  # no TEL line rather than a made-up aperture
        tel = f"{rep.telescope_aperture:.2f}-m"
        if rep.telescope_f_ratio > 0:
            tel += f" f/{rep.telescope_f_ratio:.1f}"
        header["TEL"] = f"{tel} {rep.telescope_design} + {rep.telescope_detector}"
    cats = set(np.asarray(observations["ast_cat"]).astype(str)) if observations is not None and "ast_cat" in \
        observations.colnames and len(observations) else {rep.astcat}
    if cats and "UNK" not in cats and "" not in cats:  # one NET line claims it for every record
        header["NET"] = ", ".join(_NET.get(c, c) for c in sorted(cats))
    header["ACK"] = "ssodetect observations"
    if rep.comment:
        header["COM"] = rep.comment  # wrapped onto further COM lines, never cut
    return header


def _identities(objects: Table) -> dict:
    """Object -> (permID, provID) from the ``designation`` filled by known-object identification:
    ``(433) Eros`` -> ("433", ""), ``2019 AB12`` -> ("", "2019 AB12"), ``C/2020 Y2 (ATLAS)`` -> ("", "C/2020 Y2")."""
    out = {}
    if "designation" not in objects.colnames:
        return out
    for row in objects:
        desig = str(row["designation"]).strip()
        if not desig:
            continue
        numbered = re.match(r"^\((\d+)\)", desig)
        if numbered:
            out[str(row["object"])] = (numbered.group(1), "")
            continue
        prov = re.match(r"^([ACDPX]/\d{4} [A-Z]{1,2}\d*|\d{4} [A-HJ-Y][A-HJ-Z]\d*)", desig)
        if prov:
            out[str(row["object"])] = ("", prov.group(1))
    return out


def _reportable(sky: Table, ctx: dict, config: Config) -> tuple[Table, list[str]]:
    """The rows for ADES/MPC with their catalogues, and the placeholders a submitter must know about.

    ``ast_cat``: ``[report] astcat`` for positions through a WCS fitted to the reference catalogue
    (``wcs = fit``), ``[report] header_astcat`` for a header or user WCS.  ``phot_cat``: ``[report] photcat``
    for a zero point fitted to the catalogue, empty for a header zero point.  A magnitude from the default
    zero point (``[io] default_zeropoint``: nothing calibrated it) is not reported (NaN).
    """
    sky = sky.copy()
    rep = config.report
    n = len(sky)
    wcs = np.asarray(sky["wcs"]).astype(str) if n else np.zeros(0, str)
    sky["ast_cat"] = np.where(wcs == "fit", rep.astcat, rep.header_astcat) if n else np.zeros(0, "U8")
    placeholders = []
    sources = ctx.get("zeropoint_sources")
    if sources is None:  # a run made before zero-point sources were recorded: its magnitudes as they were written
        sources = {}
        zp = np.full(n, "unknown")
        if n:
            placeholders.append("this run did not record where its zero points came from: magnitudes are reported "
                                f"with photCat {rep.photcat or '(none)'} as configured; check them")
    else:
        zp = np.array([sources.get(f"{int(r['exposure'])}:{r['ccd']}", "default") for r in sky]) if n else np.zeros(0, str)
    sky["phot_cat"] = np.where((zp == "fit") | (zp == "unknown"), rep.photcat, "") if n else np.zeros(0, "U8")
    uncalibrated = zp == "default"
    if uncalibrated.any():
        sky["mag"] = np.where(uncalibrated, np.nan, np.asarray(sky["mag"], float))
        placeholders.append(f"{int(uncalibrated.sum())} of {n} magnitudes use the default zero point "
                            f"{config.io.default_zeropoint:g} (no zero-point keyword, no catalogue fit): they are "
                            "left out of the ADES and MPC files")
    if n and np.any(sky["ast_cat"] == "UNK"):
        remedy = ("the reference catalogue solved none of their exposures; set [report] header_astcat"
                  if ctx.get("catalogue_fit") else "set [report] header_astcat, or give --refcat")
        placeholders.append(f"{int(np.sum(sky['ast_cat'] == 'UNK'))} positions come from a header WCS whose catalogue "
                            f"is unknown: astCat UNK ({remedy})")
    station = rep.station if rep.station != "XXX" else (ctx.get("station") or rep.station)  # a setting wins
    if n and station == "XXX":
        placeholders.append("observatory code XXX (unassigned): set [report] station or --station before submitting")
    if n and rep.telescope_aperture <= 0 and not ctx.get("aperture"):
        placeholders.append("telescope aperture unknown (no APTDIA/APTAREA in the header, [report] telescope_aperture "
                            "not set): no ADES file (it needs one), the MPC file has no TEL line")
    return sky, placeholders


def _report_settings(config: Config, ctx: dict) -> Config:
    """The report settings with the telescope aperture read from the header where the configuration has none."""
    report = config.model_copy(deep=True)
    if report.report.telescope_aperture <= 0 and ctx.get("aperture"):
        report.report.telescope_aperture = round(float(ctx["aperture"][0]), 4)
    if not report.report.telescope_name and ctx.get("telescope"):
        report.report.telescope_name = str(ctx["telescope"])[:100]
    return report


def _read_table(path: Path) -> Table:
    """An ECSV product of the run; a damaged one (truncated, edited) is an :class:`InputError` naming it."""
    try:
        return Table.read(path, format="ascii.ecsv")
    except Exception as exc:  # astropy raises many kinds (InconsistentTableError, ValueError, KeyError, ...)
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable ECSV table ({detail})") from None


def write_reports(source: str | Path, target: str | Path, config: Config, *, title: str | None = None,
                  evaluation: Table | None = None, config_text: str | None = None) -> list[Path]:
    """Write the ADES, 80-column and HTML reports of the run in ``source`` into ``target``.

    Parameters
    ----------
    source : path
        A run's output directory (or its staging directory during the run).
    target : path
        Where the four report files go (the same directory for a run).
    config : Config
        Report settings (observatory, people, telescope, catalogues, time precision).
    title : str, optional
        Title of the HTML page (default: the name of ``source``).
    evaluation : Table, optional
        Completeness against the simulated truth (``evaluation.ecsv`` of ``ssodetect evaluate``; default: the
        one in ``source`` if any), plotted on the page.
    config_text : str, optional
        The configuration shown on the page (default: ``source``'s ``config.toml``).

    Returns
    -------
    list of Path
        The files written.
    """
    source, target = Path(source), Path(target)
    observations = _read_table(source / "observations.ecsv")
    objects = _read_table(source / "objects.ecsv")
    try:
        provenance = safejson.read(source / "provenance.json")
        if not isinstance(provenance, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise InputError(f"{source / 'provenance.json'}: unreadable ({str(exc).splitlines()[0][:200]})") from None
    ctx = provenance.get("report_context", {})
    # an explicit [report] station (the run's or ssodetect report --config's) wins over the header's code
    station = config.report.station if config.report.station != "XXX" else (ctx.get("station") or "XXX")
    mixed = "/" in str(ctx.get("filter", ""))  # frames of several filters ([io] allow_mixed_filters)
    band = "" if mixed else (config.report.band or ctx.get("band", ""))  # no single band: no magnitudes
    seeing = {int(k): float(v) for k, v in ctx.get("seeing", {}).items() if v is not None}
    positions = {int(k): tuple(v) for k, v in ctx.get("positions", {}).items() if v}
    if config.report.observer_position:  # the configuration's position stands in where headers gave none
        fixed = tuple(config.report.observer_position)
        for exposure in np.unique(np.asarray(observations["exposure"])) if len(observations) else []:
            positions.setdefault(int(exposure), fixed)
    identities = _identities(objects)
    # ADES and MPC carry astrometry only: positions on a relative WCS (frames registered to each other) are not
    relative = np.asarray(observations["wcs"]).astype(str) == "relative" if len(observations) else np.zeros(0, bool)
    if relative.any():
        log.warning("%d observations on a relative WCS (no astrometric solution: give --refcat or frames with a WCS) "
                    "are left out of the ADES and MPC reports; their pixel positions are in observations.ecsv",
                    int(relative.sum()))
    sky, placeholders = _reportable(observations[~relative], ctx, config)
    report = _report_settings(config, ctx)
    for text in placeholders:
        log.warning("report: %s", text)
    written = []
    target.mkdir(parents=True, exist_ok=True)
    if len(sky):
        software = " ".join(f"{k} {v}" for k, v in list(provenance.get("software", {}).items())[:1])
        if report.report.telescope_aperture > 0:
            block = ades_block(sky, report.report, station=station, band=band, seeing=seeing, identities=identities,
                               positions=positions, filter_name=ctx.get("filter", ""),
                               pixel_scale=ctx.get("pixel_scale"), array_size=ctx.get("array_size", ""),
                               software=software)
            for name, text in (("observations.psv", format_psv([block])), ("observations.xml", format_xml([block]))):
                (target / name).write_text(text)
                written.append(target / name)
        records = mpc80_records(sky, station=station, band=band, identities=identities, positions=positions)
        (target / "observations.mpc").write_text(format_mpc80(records, mpc80_header(report, station, sky)))
        written.append(target / "observations.mpc")
        n_regions = write_regions(observations, objects, target / "objects.reg")
        written.append(target / "objects.reg")
        log.info("objects.reg: %d DS9/CARTA regions (detections, tracks, names)", n_regions)
    else:
        log.info("no observation with sky coordinates: no ADES (observations.psv/.xml) or MPC (observations.mpc) "
                 "report written")
    astrometry = _read_table(source / "astrometry.ecsv") if (source / "astrometry.ecsv").exists() else None
    known = _read_table(source / "known.ecsv") if (source / "known.ecsv").exists() else None
    if config_text is None:
        config_text = (source / "config.toml").read_text() if (source / "config.toml").exists() else ""
    names = {k: (v[0] or v[1]) for k, v in identities.items()}
    vetting = _read_table(source / "vetting.ecsv") if (source / "vetting.ecsv").exists() else None
    if evaluation is None and (source / EVALUATION_FILE).exists():
        evaluation = _read_table(source / EVALUATION_FILE)
    header = header_rows(ctx, report=config.report, objects=objects, observations=observations, n_known=len(names),
                         astrometry=astrometry, vetting=vetting, link=provenance.get("link"),
                         refcat=provenance.get("refcat"))
    if config.report.cutouts and len(objects) and not (source / "cutouts.fits").exists():
        # (the page was redrawn with 4 images instead of 24, without a word)
        log.warning("%s: absent, so the report page shows no stamps of the %d objects (rerun the report step with "
                    "the frames at hand to cut them again)", source / "cutouts.fits", len(objects))
    plots = {"rate against position angle": rate_vs_pa(objects), "magnitude against rate": mag_vs_rate(objects),
             "astrometric residuals per CCD": astrometric_residuals(astrometry),
             "completeness (ssodetect evaluate)": completeness_curves(evaluation)}
    page = render_report(
        title=title or f"ssodetect run: {source.resolve().name}", observations=observations, objects=objects,
        provenance=provenance, config_text=config_text, astrometry=astrometry,
        cutouts=read_cutouts(source / "cutouts.fits"), overview=read_overview(source / "overview.fits"),
        identities=names, known=known, notes=placeholders, header=header, plots=plots,
    )
    (target / "report.html").write_text(page, encoding="utf-8")
    written.append(target / "report.html")
    return written
