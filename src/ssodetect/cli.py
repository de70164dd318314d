"""The ``ssodetect`` command: simulate, run, batch, astrometry, calibrate, evaluate, report, ml, steps, config.

Each sub-command parses its arguments and calls one library function.

Exit status (:data:`EXIT_CODES`): 0 success; 1 success with warnings (the run completed and wrote every
output, but warnings were logged: CCD exposures not solved, frames dropped, an alert not delivered; for
``batch``: some fields failed or warned); 2 bad input or configuration (one line naming the file and the problem;
nothing written); 3 internal error (a bug: one line, the traceback with ``-v``; nothing written);
130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 129 (SIGHUP): the stage discarded and the lock given up.
"""
from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from ssodetect import safejson
from ssodetect._version import __version__
from ssodetect.errors import PrintableFormatter, RepeatFilter, SSODetectError, WarningCount, printable

__all__ = ["main", "EXIT_CODES"]

#: Exit statuses of the command.
EXIT_CODES = {0: "success", 1: "success with warnings (batch: some fields failed or warned)",
              2: "bad input or configuration", 3: "internal error", 129: "terminated (SIGHUP)", 130: "interrupted",
              143: "terminated (SIGTERM)"}

log = logging.getLogger("ssodetect")


def _progress(args) -> bool:
    """Whether progress bars are drawn: not with ``--quiet``, and only when stderr is a terminal (a bar written to
    a file or pipe is never ended by a line break, so the next warning or error line would be glued to it)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return not args.quiet and bool(isatty and isatty())


def _simulate(args) -> int:
    from pydantic import ValidationError

    from ssodetect.errors import ConfigError
    from ssodetect.simulate import SimulationConfig, simulate

    params = {"nx": args.size, "ny": args.size, "layout": args.layout}
    if args.nccd is not None or args.family_member is None:
        params["nccd"] = 1 if args.nccd is None else args.nccd
    if args.seed is not None or args.family_member is None:
        params["seed"] = 1 if args.seed is None else args.seed
    for name in (
        "n_exposures", "movers_per_ccd", "dither", "cosmic_fraction", "star_density", "distortion",
        "header_pointing_error", "header_rotation_error", "header_scale_error", "fast_fraction", "fast_rate_max",
        "tracking_drift", "tracking_angle_step", "known_orbits", "known_count",
    ):
        value = getattr(args, name)
        if value is not None:
            params[name] = value
    if args.no_satellite:
        params["satellite"] = False
    if args.spikes:
        params["spikes"] = True
    if args.tracked_target:
        params["tracked_target"] = True
    try:
        if args.family_member is not None:
            from ssodetect.simulate import family_member

            if args.family_member < 0:
                raise ConfigError(f"simulate: --family-member must be >= 0 (got {args.family_member})")
            sim_config = family_member(args.family_member, **params)
        else:
            sim_config = SimulationConfig(**params)
    except ValidationError as exc:
        # the options' names, not the configuration's fields (--size, not nx and ny)
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            option = _SIMULATE_OPTIONS.get(field, "--" + field.replace("_", "-")) if field else ""
            message = str(err["msg"]).removeprefix("Value error, ")
            said = f"{option}: {message}" if option else message
            if said not in problems:
                problems.append(said)
        raise ConfigError(f"simulate: invalid parameters ({'; '.join(problems)})") from None
    summary = simulate(sim_config, args.outdir, progress=_progress(args))
    print(
        f"wrote {len(summary['files'])} image files, refcat.ecsv, truth.ecsv and truth_wcs.ecsv to "
        f"{printable(args.outdir)}: "
        f"{summary['n_movers']} moving objects; single-exposure 5-sigma limit {summary['limit_5sigma']:.2f} mag"
    )
    if summary["n_movers"] == 0 and sim_config.movers_per_ccd > 0:
        # (--movers-per-ccd is per 2048^2 px: a small CCD with a few drew none, and the scene said nothing)
        log.warning("simulate: no moving object drawn (--movers-per-ccd %g per 2048^2 px of detector gives %.2f on "
                    "average for %d CCD(s) of %dx%d px)", sim_config.movers_per_ccd,
                    sim_config.movers_per_ccd * sim_config.nccd * sim_config.nx * sim_config.ny / 2048.0**2,
                    sim_config.nccd, sim_config.nx, sim_config.ny)
        return 1
    return 0


#: ``simulate`` options of the simulation's fields whose names differ from theirs.
_SIMULATE_OPTIONS = {"nx": "--size", "ny": "--size", "header_pointing_error": "--pointing-error",
                     "header_rotation_error": "--rotation-error", "header_scale_error": "--scale-error",
                     "tracking_angle_step": "--tracking-turn", "satellite": "--no-satellite"}


def _option(section, name: str, value, option: str) -> None:
    """Set a configuration value from a command-line option; a value the configuration refuses is a ConfigError."""
    from pydantic import ValidationError

    from ssodetect.errors import ConfigError

    try:
        setattr(section, name, value)
    except ValidationError as exc:
        problems = "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in exc.errors())
        text = str(value)
        # a newline would end the line; blanks would vanish in it ("--station  : ...")
        said = text if text.isprintable() and text.strip() == text and text else ascii(text)
        raise ConfigError(f"{option} {said}: {problems}") from None


def _execution_config(args):
    """The configuration file given with --config, with --workers and --quiet (or a stderr that is not a
    terminal: no progress bars) applied."""
    from ssodetect.config import load_config

    config = load_config(args.config)
    if args.workers is not None:
        _option(config.execution, "workers", args.workers, "--workers")
    if not _progress(args):
        config.execution.progress = False
    if getattr(args, "profile", None) is not None:  # (an empty one is refused, as an empty --obs-id is)
        _option(config.profile, "name", args.profile, "--profile")
    elif args.config is not None and hasattr(args, "profile"):
        _check_profile_of(config, args.config)
    return config


def _check_profile_of(config, path) -> None:
    """A profile the configuration file ``path`` names, checked where the file can be named with the problem."""
    from ssodetect.errors import ConfigError
    from ssodetect.profiles import named_profile

    try:
        named_profile(config.profile.name)
    except ConfigError as exc:
        raise ConfigError(f"{path}: [profile] name: {exc}") from None


def _run(args) -> int:
    from ssodetect.pipeline import run_pipeline
    from ssodetect.pipeline.run import check_label, resolve_refcat

    config = _execution_config(args)
    if args.scheduler:
        config.execution.scheduler = args.scheduler
    if args.station is not None:  # (an empty one is refused, as an empty --obs-id is)
        _option(config.report, "station", args.station, "--station")
    for option, values in (("--obs-id", [args.obs_id] if args.obs_id else []), ("--keyword", args.keywords)):
        for value in values:  # they go into file names, reports and the registry: one printable line
            check_label(option, value)
    if args.orbits:
        config.known.orbits = list(config.known.orbits) + list(args.orbits)
    if args.allow_mixed_filters:
        config.io.allow_mixed_filters = True
    if args.keep_intermediate:
        config.intermediate.keep = True
    if args.ldac:
        config.intermediate.keep = config.intermediate.ldac = True
    result = run_pipeline(args.inputs, args.out, config, refcat=resolve_refcat(args.refcat, args.inputs, config),
                          from_step=args.from_step, to_step=args.to_step, reuse=not args.rerun, obs_id=args.obs_id,
                          keywords=args.keywords, command=["ssodetect", *args.argv])
    total = result.timings.get("total", float("nan"))
    steps = ", ".join(f"{r['step']} {r['status']}" for r in result.steps)
    if result.objects is None:
        print(f"stopped after step {args.to_step} in {total:.1f} s ({steps}) -> {printable(args.out)}/manifest.json; "
              f"go on with --from-step")
        return 1 if result.warnings else 0
    n_fast = int((result.objects["kind"] == "streak").sum()) if len(result.objects) else 0
    n_known = int(sum(bool(str(d)) for d in result.objects["designation"])) if len(result.objects) else 0
    print(
        f"{len(result.objects)} moving objects ({n_fast} fast, trailed; {n_known} known), {len(result.observations)} "
        f"observations in {total:.1f} s -> {printable(args.out)}/" + ", ".join(
            name for name in ("report.html", "observations.psv", "observations.xml", "observations.mpc",
                              "observations.ecsv", "objects.ecsv", "known.ecsv", "alert.json")
            if (Path(args.out) / name).exists())
    )
    print(f"steps: {steps}; profile {result.profile.get('name', 'none')}; {result.warnings} warning(s)")
    return 1 if result.warnings else 0


def _batch(args) -> int:
    from ssodetect.pipeline.batch import fields_from_arguments, run_batch

    config = _execution_config(args)
    if args.scheduler:
        config.execution.scheduler = args.scheduler
    fields = fields_from_arguments(args.inputs)
    summary = run_batch(fields, args.out, config)
    counts = {s: int((summary["status"] == s).sum()) for s in ("done", "skipped", "failed")}
    warned = summary[summary["warnings"] > 0]
    print(printable(f"{len(summary)} fields: {counts['done']} run, {counts['skipped']} already complete, "
                    f"{counts['failed']} failed" + (f", {len(warned)} with warnings" if len(warned) else "")
                    + f"; {int(summary['n_objects'].sum())} moving objects -> {args.out}/batch_summary.ecsv"))
    for row in summary[summary["status"] == "failed"]:
        print(printable(f"  {row['field']}: {row['message']}"))
    for row in warned:
        print(printable(f"  {row['field']}: {row['warnings']} warning(s), see "
                        f"{Path(args.out) / row['field'] / 'run.log'}"))
    # a field run with warnings is a success with warnings, as its own `ssodetect run` would be (exit 1)
    return 1 if counts["failed"] or len(warned) else 0


def _astrometry(args) -> int:
    import numpy as np

    from ssodetect.pipeline import run_astrometry
    from ssodetect.pipeline.run import resolve_refcat

    config = _execution_config(args)
    formats = ("head", "fits") if args.format == "both" else (args.format,)
    refcat = resolve_refcat(args.refcat, args.inputs, config)
    table = run_astrometry(args.inputs, args.out, refcat, config, formats=formats)
    ok = table[table["status"] == "ok"]
    rms = f"median rms {1e3 * float(np.median(np.maximum(ok['rms_ra'], ok['rms_dec']))):.1f} mas" if len(ok) else ""
    print(f"{len(ok)}/{len(table)} CCD exposures solved {rms} -> {printable(args.out)}/astrometry.ecsv")
    for row in table[table["status"] != "ok"]:
        print(printable(f"  exposure {row['exposure']} CCD {row['ccd']}: {row['reason']}"))
    return 0 if len(ok) else 1


def _calibrate(args) -> int:
    from ssodetect.calibrate import build_calibration
    from ssodetect.calibrate.outputs import check_calibration_output, master_folder, write_calibration
    from ssodetect.config import load_config
    from ssodetect.io import find_inputs, scan_inputs
    from ssodetect.io.outputs import check_apart

    config = load_config(args.config)
    config.calibrate.hot_pixels = False  # masters from calibration frames only (the run finds hot pixels itself)
    out = Path(args.out)
    check_apart(out, [*args.inputs, *config.calibrate.bias, *config.calibrate.dark, *config.calibrate.flat],
                owner="calibration")
    check_calibration_output(out)  # (before the frames are read)
    counter = WarningCount()  # a calibration made with warnings exits 1, as a run does (campaign 31: always 0)
    log.addHandler(counter)
    try:
        lights, masters = build_calibration(scan_inputs(find_inputs(args.inputs), config.io), config)
        if not masters:
            raise SSODetectError(f"{args.inputs[0]}: no bias, dark or flat frame among the inputs or in [calibrate]")
        write_calibration(out, masters, lights, config, with_lights=args.lights)
    finally:
        log.removeHandler(counter)
    for ccd, m in masters.items():
        print(printable(f"CCD {ccd}: {m.describe()} -> {out if len(masters) == 1 else out / master_folder(ccd)}"))
    if args.lights:
        print(printable(f"{len(lights)} light frames calibrated -> {out / 'calibrated'} (masked pixels NaN)"))
    return 1 if counter.count else 0


#: Columns ``evaluate`` needs in a truth table (those ``ssodetect simulate`` writes).
TRUTH_COLUMNS = ("object", "exposure", "ra", "dec", "mag", "rate", "trail_length", "on_detector")
#: Most rows ``ssodetect runs --limit`` takes (SQLite holds 64-bit integers: 1e23 was an internal error).
MAX_RUNS_LIMIT = 10**9


#: A truth table whose objects all lie farther than this [deg] from the run's field is of another field.
MAX_TRUTH_DISTANCE_DEG = 2.0


def _same_field(observations, obs_path: Path, truth, truth_path: Path) -> None:
    """Refuse a truth table of another field: none of its objects within :data:`MAX_TRUTH_DISTANCE_DEG` of the
    run's observations or of its solved CCD exposures' reference points
    (:func:`ssodetect.evaluate.nearest_truth_distance`), or of another sequence: its exposures at other times
    (:func:`ssodetect.evaluate.exposure_time_mismatch`).  Nothing to compare: not judged."""
    import numpy as np
    from astropy.io import fits
    from astropy.table import Table

    from ssodetect.evaluate import exposure_time_mismatch, frames_mismatch, nearest_truth_distance

    ra, dec = list(np.asarray(observations["ra"], float)), list(np.asarray(observations["dec"], float))
    solutions = obs_path.parent / "astrometry.ecsv"
    if solutions.is_file():
        try:
            for row in Table.read(solutions, format="ascii.ecsv"):
                if str(row["status"]) == "ok" and str(row["wcs_header"]).strip():
                    header = fits.Header.fromstring(str(row["wcs_header"]))
                    ra.append(float(header.get("CRVAL1", np.nan)))
                    dec.append(float(header.get("CRVAL2", np.nan)))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # the run's own table: its observations decide
    nearest = nearest_truth_distance(ra, dec, truth["ra"], truth["dec"])
    if nearest > MAX_TRUTH_DISTANCE_DEG:  # (NaN: nothing to compare)
        raise SSODetectError(f"{truth_path}: a truth table of another field: its nearest object is {nearest:.1f} deg "
                             f"from the run's observations and solved CCDs ({obs_path})")
    mismatch = exposure_time_mismatch(observations, truth)
    if mismatch is not None:
        raise SSODetectError(f"{truth_path}: a truth table of another sequence: {mismatch} ({obs_path})")
    manifest = obs_path.parent / "manifest.json"
    try:
        inputs = safejson.read(manifest).get("inputs") if manifest.is_file() else None
    except (OSError, ValueError, AttributeError):
        inputs = None  # the run's own record: its observations decided above
    mismatch = frames_mismatch(inputs, truth) if isinstance(inputs, list) else None
    if mismatch is not None:
        raise SSODetectError(f"{truth_path}: a truth table of another scene: {mismatch} ({obs_path})")


def _evaluate(args) -> int:
    from astropy.table import Table

    import math

    outdir = Path(args.outdir)
    _check_run_directory(outdir, writing=not args.no_write)
    obs_path = outdir / "observations.ecsv" if outdir.is_dir() else outdir
    if not (math.isfinite(args.rate_min) and math.isfinite(args.rate_max) and 0 <= args.rate_min < args.rate_max
            and math.isfinite(args.bright)):
        raise SSODetectError(f"--rate-min {args.rate_min:g} --rate-max {args.rate_max:g} --bright {args.bright:g}: "
                             "finite, with 0 <= rate-min < rate-max")
    if outdir.is_dir() and not obs_path.exists():  # (a run stopped with --to-step, or not a run at all)
        raise SSODetectError(f"{outdir}: not a finished ssodetect run (observations.ecsv is missing)")
    for path, what in ((obs_path, "run observations"), (Path(args.truth), "truth table")):
        if path.exists() and not path.is_file():
            raise SSODetectError(f"{path}: not a regular file (a FIFO, device or directory is not a {what})")
    try:
        observations = Table.read(obs_path, format="ascii.ecsv")
    except (OSError, ValueError) as exc:
        raise SSODetectError(f"{obs_path}: cannot read run observations ({exc})") from None
    try:
        truth = Table.read(args.truth, format="ascii.ecsv")
    except (OSError, ValueError) as exc:
        raise SSODetectError(f"{args.truth}: cannot read truth table ({exc})") from None
    missing = [c for c in TRUTH_COLUMNS if c not in truth.colnames]
    if missing:
        raise SSODetectError(f"{args.truth}: not a truth table of 'ssodetect simulate' (no column "
                             f"{', '.join(missing)})")
    import numpy as np

    counter = WarningCount()  # any warning (the reports it rewrites, the truth's rows) makes the exit status 1
    log.addHandler(counter)
    try:
        from ssodetect.evaluate import check_truth

        check_truth(truth, Path(args.truth))
        finite = np.isfinite(np.asarray(truth["ra"], float)) & np.isfinite(np.asarray(truth["dec"], float))
        if not finite.any():  # (scored NaN completeness and every object false, written as an evaluation)
            raise SSODetectError(f"{args.truth}: a truth table with no mover at a finite position ({len(truth)} "
                                 "rows): nothing to score against")
        _score(args, truth, finite, observations, obs_path, outdir)
    finally:
        log.removeHandler(counter)
    return 1 if counter.count else 0


def _check_evaluation_writable(outdir: Path) -> None:
    """Refuse a run directory whose ``evaluation.ecsv`` is not ssodetect's."""
    from ssodetect.io.outputs import recorded_files
    from ssodetect.report.products import EVALUATION_FILE

    if (outdir / EVALUATION_FILE).exists() and EVALUATION_FILE not in (recorded_files(outdir) or set()):
        raise SSODetectError(f"{outdir / EVALUATION_FILE}: a file ssodetect did not write; move it, or use --no-write")


def _score(args, truth, finite, observations, obs_path: Path, outdir: Path) -> None:
    """``evaluate``'s scoring, printing and writing, once its inputs are read (warnings are counted by the caller)."""
    from astropy.table import Table

    from ssodetect.evaluate import evaluate_run, format_evaluation

    if not finite.all():
        log.warning("%s: %d of %d truth rows without a finite position are not matched (their movers may still count "
                    "as findable)", args.truth, int((~finite).sum()), len(truth))
    missing = [c for c in ("object", "exposure", "ra", "dec") if c not in observations.colnames]
    if missing:
        raise SSODetectError(f"{obs_path}: not the observations of a run (no column {', '.join(missing)})")
    _same_field(observations, obs_path, truth, Path(args.truth))
    writing = outdir.is_dir() and (outdir / "provenance.json").is_file() and not args.no_write
    if writing:  # refused before anything is printed (the scores had been printed, then the command failed)
        _check_evaluation_writable(outdir)
    ev = evaluate_run(observations, truth, rate_range=(args.rate_min, args.rate_max), bright_limit=args.bright)
    print(format_evaluation(ev))
    if writing:
        _write_evaluation(outdir, ev, args)
    solutions_path = obs_path.parent / "astrometry.ecsv"
    truth_wcs_path = Path(args.truth).parent / "truth_wcs.ecsv"
    if solutions_path.exists() and truth_wcs_path.exists():
        import numpy as np

        from ssodetect.evaluate import evaluate_wcs

        solutions = Table.read(solutions_path, format="ascii.ecsv")
        acc = evaluate_wcs(solutions, Table.read(truth_wcs_path, format="ascii.ecsv"))
        if len(acc):
            print(
                f"fitted WCS vs truth: {len(acc)}/{len(solutions)} CCD exposures solved, rms over the CCD "
                f"median {np.median(acc['rms_mas']):.1f} mas, worst {np.max(acc['rms_mas']):.1f} mas "
                f"(median {int(np.median(acc['n_stars']))} stars)"
            )
        else:
            print(f"fitted WCS vs truth: 0/{len(solutions)} CCD exposures solved")


def _update_manifest(outdir: Path, stage: Path, written: list, dropped: set, argv, config: dict | None = None) -> None:
    """The run's ``manifest.json`` with the checksums of the rewritten reports (and without the dropped ones), staged;
    ``config``: the configuration now recorded (``report --config``)."""
    import json
    from datetime import datetime, timezone

    from ssodetect.io.outputs import sha256_file

    path = outdir / "manifest.json"
    if not path.is_file():
        return
    try:
        manifest = safejson.read(path)
        products = manifest["products"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SSODetectError(f"{path}: unreadable run manifest ({exc})") from None
    for name in dropped:
        products.pop(name, None)
    for p in written:
        products[p.name] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    if config is not None:
        manifest["config"] = config
    manifest.setdefault("reports", []).append({"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                               "command": list(argv), "files": sorted(p.name for p in written)})
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _run_products(directory: Path) -> set:
    """The names of the products a run in ``directory`` lists in its ``manifest.json`` (with the manifest and the run's
    own tables); empty when ``directory`` holds no run."""
    from ssodetect.io.outputs import RECORD as OUTPUT_RECORD

    if not (directory / "manifest.json").is_file():
        return set()
    try:
        products = safejson.read(directory / "manifest.json").get("products", {})
    except (OSError, ValueError, AttributeError):
        products = {}
    listed = set(products) if isinstance(products, dict) else set()
    return listed | {"manifest.json", "config.toml", "objects.ecsv", "observations.ecsv", "provenance.json", "run.log",
                     OUTPUT_RECORD}


def _check_scores_path(out: Path) -> None:
    """Refuse an ``ml predict --out`` file that is one of a run's products, a hidden name (ssodetect's records and
    stages), or anywhere inside a run's subfolders (its steps, logs, regions)."""
    if out.name in ("", ".", "..") or str(out).endswith(("/", os.sep)) or out.is_dir():
        raise SSODetectError(f"--out {out}: a directory, not a file name; give the scores file's name")
    if out.name.startswith("."):
        raise SSODetectError(f"--out {out}: a hidden name (ssodetect keeps its records and stages under such names); "
                             "give another file name")
    if out.name in _run_products(out.parent):
        raise SSODetectError(f"--out {out}: a product of the run in {out.parent} (the run's own tables and reports "
                             "are never replaced by scores); give another file name")
    from ssodetect.io.outputs import directory_kind, enclosing_kind

    found = directory_kind(out.parent)
    outer = (Path(os.path.realpath(out.parent)), found) if found is not None else enclosing_kind(out.parent)
    if outer is not None:
        # (scores recorded as a run's, a scene's or a dataset's own file went with the next command there; a folder
        # deeper inside one, or reached through a link, too)
        raise SSODetectError(f"--out {out}: inside {outer[1][1]} ({outer[0]}), which its command replaces as a "
                             "whole, the scores with it; write the scores elsewhere")
    if os.path.lexists(out) and not _is_scores_table(out):
        raise SSODetectError(f"--out {out}: an existing file that is not a scores table of ml predict (a model, a "
                             "frame, another command's table: never replaced by scores); give another file name")
    folder = Path(os.path.abspath(out.parent))
    for above in folder.parents:
        if (above / "manifest.json").is_file() and (above / "provenance.json").is_file():
            raise SSODetectError(f"--out {out}: inside the run in {above} (its steps, logs and regions are its "
                                 "own); write the scores elsewhere")


def _is_scores_table(path: Path) -> bool:
    """Whether ``path`` is a regular file holding an ECSV table with an ``ml_score`` column (what ``ml predict
    --out`` writes: an earlier one may be replaced); only its header is read."""
    import stat

    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
    except OSError:
        return False
    lines = head.decode("utf-8", "replace").splitlines()
    return bool(lines) and lines[0].startswith("# %ECSV") and any(
        line.startswith("# ") and "name: ml_score" in line for line in lines)


def _check_run_directory(outdir: Path, *, writing: bool = False) -> None:
    """Before ``report`` or ``evaluate`` reads a run directory: its run tables must be those the run wrote (an
    edited one is refused, named); a named pipe, device or directory in a product's place is never read (a pipe
    would block); ``writing``: a products record not signed with the user's key is refused before any work too (the
    commit would refuse it after the work, its stage left behind)."""
    from ssodetect.io.outputs import RECORD as RECORD_NAME, irregular_products, recorded_files

    if outdir.is_dir() and writing:
        recorded_files(outdir)  # raises for a record that does not verify
    if outdir.is_dir() and (outdir / RECORD_NAME).is_file():
        try:
            ours = recorded_files(outdir)
        except SSODetectError:
            ours = None  # judged where it is written (a read alone needs no signature of the user's)
        if ours is not None:
            for name in ("observations.ecsv", "objects.ecsv"):
                if (outdir / name).exists() and name not in ours:
                    raise SSODetectError(f"{outdir / name}: changed since ssodetect wrote it (or not written by it): "
                                         "the reports are drawn from the run's own tables; run again, or evaluate "
                                         "the file itself")
    if outdir.is_dir():
        odd = irregular_products(outdir)
        if odd:
            raise SSODetectError(f"{outdir / odd[0]}: not a regular file (a pipe, device or directory where ssodetect "
                                 "keeps a product); move it away")


def _write_evaluation(outdir: Path, ev, args) -> None:
    """``evaluation.ecsv`` beside the run's products and its report page redrawn with the completeness plots,
    committed together; a file of that name ssodetect did not write is refused."""
    from ssodetect.config import load_config
    from ssodetect.evaluate import evaluation_table
    from ssodetect.io import OutputStage
    from ssodetect.io.outputs import recorded_files
    from ssodetect.report.products import EVALUATION_FILE, REPORT_FILES, write_reports

    _check_evaluation_writable(outdir)
    config = load_config(outdir / "config.toml" if (outdir / "config.toml").is_file() else None)
    table = evaluation_table(ev)
    with OutputStage(outdir) as stage:
        table.write(stage.file(EVALUATION_FILE), format="ascii.ecsv")
        written = write_reports(outdir, stage.path, config, title=f"ssodetect run: {outdir.resolve().name}",
                                evaluation=table)
        dropped = set(REPORT_FILES) - {p.name for p in written}
        _update_manifest(outdir, stage.path, [stage.file(EVALUATION_FILE), *written], dropped,
                         argv=["ssodetect", *args.argv])
    ours = (recorded_files(outdir) or set()) if dropped else set()
    for name in dropped & ours:
        (outdir / name).unlink(missing_ok=True)
    print(printable(f"{outdir / EVALUATION_FILE}; {outdir / 'report.html'} now shows completeness against magnitude "
                    "and rate"))


def _report(args) -> int:
    from ssodetect.config import dump_toml, load_config
    from ssodetect.io import OutputStage
    from ssodetect.io.outputs import OutputLock, recorded_files
    from ssodetect.report.products import REPORT_FILES, write_reports

    outdir = Path(args.outdir)
    _check_run_directory(outdir, writing=True)
    for name in ("observations.ecsv", "objects.ecsv", "provenance.json"):
        if not (outdir / name).is_file():
            raise SSODetectError(f"{outdir}: not a finished ssodetect run ({name} is missing)")
    config = load_config(outdir / "config.toml" if (outdir / "config.toml").is_file() else None)
    if args.config:
        # the run's settings stay; the reports take the given file's [report] section, recorded as the run's now
        given = load_config(args.config)
        if given.report != config.report:
            config.report = given.report
        else:
            args.config = None  # nothing to record
    counter = WarningCount()  # a report written with warnings exits 1, as the run that wrote it did
    log.addHandler(counter)
    # held until the dropped reports are gone too (a run could write them meanwhile); inside the run, as a stage
    # adding files to it keeps it
    lock = OutputLock(Path(os.path.realpath(outdir)), inside=True)
    try:
        with OutputStage(outdir, lock=lock) as stage:
            written = write_reports(outdir, stage.path, config, title=f"ssodetect run: {outdir.resolve().name}",
                                    config_text=dump_toml(config) if args.config else None)
            if args.config:
                stage.file("config.toml").write_text(dump_toml(config))
                written.append(stage.path / "config.toml")
            dropped = set(REPORT_FILES) - {p.name for p in written}
            _update_manifest(outdir, stage.path, written, dropped, argv=["ssodetect", *args.argv],
                             config=config.model_dump(mode="json") if args.config else None)
        ours = (recorded_files(outdir) or set()) if dropped else set()
        for name in dropped & ours:
            (outdir / name).unlink(missing_ok=True)  # the run's own earlier report that this one does not replace
    finally:
        lock.release()
        log.removeHandler(counter)
    for path in written:
        print(printable(outdir / path.name))
    return 1 if counter.count else 0


def _config(args) -> int:
    import json

    from ssodetect.config import Config, dump_toml, load_config

    if args.schema:
        schema = Config.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = "ssodetect run configuration"
        sys.stdout.write(json.dumps(schema, indent=2) + "\n")
        return 0
    config = load_config(args.file)
    if args.file:  # (a file naming no profile was said to be fine, and refused by run)
        from ssodetect.pipeline.run import check_named_files

        _check_profile_of(config, args.file)
        # the files it names: missing, or a pipe or device (/dev/zero as a bias), refused as run refuses them
        check_named_files(None, config, missing=True)
    sys.stdout.write(dump_toml(config, documented=not args.plain))
    return 0


def _serve(args) -> int:
    import ipaddress
    import secrets

    from ssodetect.errors import ConfigError

    try:
        import uvicorn

        from ssodetect.console.app import create_app
    except ImportError as exc:
        raise ConfigError(f"the console needs its extra ({exc.name} is missing): pip install 'ssodetect[console]'") from None
    import socket

    if not 1 <= args.workers <= 64:
        raise ConfigError(f"--workers {args.workers}: between 1 and 64")
    _check_root_of_no_kind(args.root)
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: between 1 and 65535")
    try:  # the address is free (uvicorn would stop with a raw error after starting the workers)
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((args.host, args.port))
    except OSError as exc:
        raise ConfigError(f"--host {args.host} --port {args.port}: cannot listen there ({exc.strerror or exc})") from None
    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    token = args.token or (None if loopback else secrets.token_urlsafe(18))
    scheduler = None
    if args.scheduler:
        from ssodetect.config import ExecutionConfig

        from ssodetect.pipeline.executor import require_extras

        _option(ExecutionConfig(), "scheduler", args.scheduler, "--scheduler")
        require_extras(ExecutionConfig(scheduler=args.scheduler))  # as `run` does: one nothing listens on is refused
        scheduler = args.scheduler
    watchers = []
    if args.watch:
        from ssodetect.console.watch import Watcher

        run_args = _watch_run_args(args.watch_config, args.watch_refcat, args.watch_station)
        if not (1 <= args.watch_exposures <= MAX_VISIT_EXPOSURES and 0 <= args.watch_settle < math.inf
                and 0 < args.watch_timeout < math.inf):
            raise ConfigError(f"--watch-exposures 1 to {MAX_VISIT_EXPOSURES}, --watch-settle >= 0, --watch-timeout > 0 "
                              "(finite)")
        root = Path(args.root).resolve()
        for inbox in args.watch:
            _check_root_apart(args.root, inbox, "--root")
        watchers = [Watcher(Path(inbox), root, exposures=args.watch_exposures, settle=args.watch_settle,
                            timeout=args.watch_timeout, run_args=run_args + (["--scheduler", scheduler] if scheduler else []))
                    for inbox in args.watch]
    app = create_app(args.root, token=token, workers=args.workers, scheduler=scheduler, watchers=watchers)
    print(f"ssodetect console on http://{args.host}:{args.port}/" + (f"?token={token}" if token else "")
          + f" over {printable(app.state.root)} ({args.workers} worker(s)"
          + (f", CCDs on the Dask scheduler {scheduler}" if scheduler else "")
          + "".join(f"; watching {printable(w.inbox)}" for w in watchers) + "); Ctrl-C stops it")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _watch_run_args(config: str | None, refcat: str | None, station: str | None) -> list[str]:
    """The ``ssodetect run`` arguments of a watch folder's runs, each checked now rather than in every run."""
    from ssodetect.config import ReportConfig, load_config

    run_args = []
    if config:
        load_config(config)
        run_args += ["--config", str(Path(config).resolve())]
    if refcat:
        if not Path(refcat).is_file():
            raise SSODetectError(f"{refcat}: no such reference catalogue")
        run_args += ["--refcat", str(Path(refcat).resolve())]
    if station:
        _option(ReportConfig(), "station", station, "--station")
        run_args += ["--station", station]
    return run_args


def _check_root_of_no_kind(root: str, option: str = "--root") -> None:
    """Refuse a console's or watcher's root that is (or lies inside) another command's output directory (a run, a
    simulated scene, a batch, ...): its registry and job logs would be written into it, and that command would then
    refuse to replace it (campaign 26: ``watch --root RUN`` left a run that could not be rerun).

    Raises
    ------
    ConfigError
        Naming the root and what it is or lies in.
    """
    from ssodetect.errors import ConfigError
    from ssodetect.io.outputs import directory_kind, enclosing_kind

    found = directory_kind(root)
    if found is not None:
        raise ConfigError(f"{option} {root}: holds {found[1]} ({found[2]}); a console's or watcher's root gets its "
                          "registry and runs, choose a folder of its own")
    outer = enclosing_kind(root)
    if outer is not None:
        raise ConfigError(f"{option} {root}: inside {outer[1][1]} ({outer[0]}), which its command replaces as a "
                          "whole; choose a folder of its own")


def _check_root_apart(root: str, inbox: str, option: str = "--root") -> None:
    """Refuse a root that is the watched folder or inside it: its registry and run directories would be written
    into the inbox (and taken for visits there).

    Raises
    ------
    ConfigError
        Naming both.
    """
    from ssodetect.errors import ConfigError

    real_root, real_inbox = Path(os.path.realpath(root)), Path(os.path.realpath(inbox))
    if real_root == real_inbox or real_inbox in real_root.parents:
        raise ConfigError(f"{option} {root}: is the watched folder {inbox} or inside it (the runs and their registry "
                          "would land among the visits); choose a root outside it")


def _watch(args) -> int:
    import time

    from ssodetect.console.watch import Watcher
    from ssodetect.console.worker import Workers
    from ssodetect.errors import ConfigError
    from ssodetect.pipeline.registry import Registry

    bounds = [("--exposures", args.exposures, 1 <= args.exposures <= MAX_VISIT_EXPOSURES,
               f"1 to {MAX_VISIT_EXPOSURES}"),
              ("--settle", args.settle, 0 <= args.settle < math.inf, "finite, at least 0 [s]"),
              ("--timeout", args.timeout, 0 < args.timeout < math.inf, "finite, above 0 [s]"),
              ("--workers", args.workers, 1 <= args.workers <= 64, "1-64")]
    for option, value, ok, rule in bounds:  # (comparisons with NaN are false: refused too)
        if not ok:
            raise ConfigError(f"watch: {option} {value}: must be {rule}")
    if not Path(args.inbox).is_dir():  # before the root is made
        raise ConfigError(f"{args.inbox}: not a directory to watch")
    root = Path(args.root).resolve()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--root {args.root}: exists and is not a directory")
    _check_root_apart(args.root, args.inbox)  # before the root is made
    _check_root_of_no_kind(args.root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--root {args.root}: cannot be made ({exc.strerror or exc})") from None
    run_args = _watch_run_args(args.config, args.refcat, args.station)
    watcher = Watcher(Path(args.inbox), root, exposures=args.exposures, settle=args.settle, timeout=args.timeout,
                      run_args=run_args)
    workers = Workers(root, args.workers)
    workers.start()
    try:
        if args.once:
            jobs = watcher.check()
            while True:
                with Registry(root) as reg:
                    finished = [reg.job(j) for j in jobs]
                states = [job["status"] for job in finished]
                if all(s not in ("queued", "running") for s in states):
                    break
                time.sleep(0.5)
            # a visit's run that exited 1 completed with warnings (in its run.log): so does this watch
            warned = [job["exit_code"] == 1 for job in finished]
            print(f"{len(jobs)} visit(s) run: " + ", ".join(f"job {j} {s}" + (" with warnings" if w else "")
                                                           for j, s, w in zip(jobs, states, warned))
                  if jobs else "no complete visit to run")
            for name, reason in watcher.waiting.items():  # what --once leaves behind, and why
                log.warning("visit %s not run: %s", name, reason)
            ok = all(s == "done" for s in states) and not any(warned)
            return 0 if ok and not watcher.waiting and not watcher.warned else 1
        print(f"watching {printable(args.inbox)} -> {printable(root)} ({args.exposures} exposures a visit, settle "
              f"{args.settle:g} s); Ctrl-C stops")
        watcher.start()
        while True:
            time.sleep(3600)
    finally:
        watcher.stop()
        workers.stop()


def _runs(args) -> int:
    import json

    from ssodetect.pipeline.registry import REGISTRY_NAME, Registry, user_registry

    if not 1 <= args.limit <= MAX_RUNS_LIMIT:
        raise SSODetectError(f"--limit {args.limit}: must be 1 to {MAX_RUNS_LIMIT}")
    if not str(args.root).strip():  # (listed the working directory, where an empty --station is refused)
        raise SSODetectError("runs: an empty directory name; give the directory (. for this one)")
    # a console's or watcher's root keeps its registry (its jobs too); any other directory is left as it is
    own = Path(args.root, REGISTRY_NAME)
    path = None if own.exists() or own.is_symlink() else user_registry(args.root)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # (a read-only home: an index for this call only)
            log.info("%s: cannot keep the run index there (%s); indexing in memory", path.parent, exc.strerror or exc)
            path = ":memory:"
    with Registry(args.root, path) as registry:
        counts = registry.rebuild() if args.rebuild else registry.sync()  # a damaged file: InputError
        rows = registry.runs(search=args.search, status=args.status, limit=args.limit)
        total = registry.count()
    log.info("registry %s: %d runs (%d added, %d updated, %d removed; %d manifest.json files not a run's)",
             registry.path, total, counts["added"], counts["updated"], counts["removed"], counts["unreadable"])
    if registry.damaged:  # (campaign 33: they vanished from the listing with an INFO count, exit 0)
        named = "; ".join(f"{path} ({why})" for path, why in registry.damaged[:MAX_NAMED])
        more = len(registry.damaged) - MAX_NAMED
        log.warning("%d run manifest(s) unreadable or damaged, not listed: %s%s", len(registry.damaged), named,
                    f"; and {more} more" if more > 0 else "")
    status = 1 if registry.damaged else 0
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return status
    header = f"{'started (UTC)':<20} {'status':<8} {'time':>7} {'objects':>7} {'warn':>4}  {'obs id':<12} directory"
    print(header)
    for r in rows:  # a manifest's text may hold terminal escapes: printed as escapes
        r = {k: printable(v) if isinstance(v, str) else v for k, v in r.items()}
        duration = f"{r['duration_s']:.0f} s" if r["duration_s"] is not None else "-"
        objects = "-" if r["n_objects"] is None else str(r["n_objects"])
        print(f"{r['started_utc'][:19]:<20} {r['status']:<8} {duration:>7} {objects:>7} {r['warnings']:>4}  "
              f"{(r['obs_id'] or '-')[:12]:<12} {r['outdir']}")
    shown = f"{len(rows)} of {total} runs" + (f" matching {args.search!r}" if args.search else "")
    print(shown + (f" ({args.status})" if args.status else ""))
    return status


def _steps(args) -> int:
    from ssodetect.pipeline.run import BUILTIN_STEPS, PRODUCTS
    from ssodetect.pipeline.steps import describe_graph, pipeline_steps

    sys.stdout.write(describe_graph(pipeline_steps(BUILTIN_STEPS), args.format, PRODUCTS))
    return 0


def _dataset_config(args):
    """DatasetConfig from --dataset-config (TOML) with the command-line settings applied."""
    import tomllib

    from pydantic import ValidationError

    from ssodetect.config import validation_problems
    from ssodetect.errors import ConfigError
    from ssodetect.ml.dataset import DatasetConfig

    params = {}
    if args.dataset_config:
        from ssodetect.io.frames import check_regular_file

        check_regular_file(args.dataset_config, "dataset configuration")
        try:
            params = tomllib.loads(Path(args.dataset_config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{args.dataset_config}: cannot read the dataset configuration ({exc})") from None
    for name in ("n_sequences", "seed", "mode", "size", "rate_min", "rate_max", "snr_min", "snr_max", "tracks",
                 "orbits", "fwhm", "positive_fraction"):
        value = getattr(args, name)
        if value is not None:
            params[name] = value
    try:
        return DatasetConfig(**params)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ConfigError(f"{args.dataset_config or 'ml dataset'}: invalid dataset settings ({problems})") from None


def _ml(args) -> int:
    """``ssodetect ml``: exit 0, or 1 when a warning was logged (a noisy validation split, a skipped frame), as every
    other command (campaign 34: always 0)."""
    counter = WarningCount()
    log.addHandler(counter)
    try:
        code = _ml_command(args)
    finally:
        log.removeHandler(counter)
    return 1 if code == 0 and counter.count else code


def _ml_command(args) -> int:
    from ssodetect.config import load_config

    if args.ml_command == "dataset":
        from ssodetect.pipeline.ml import make_dataset

        config = load_config(args.config)
        summary = make_dataset(args.inputs, args.out, _dataset_config(args), config, positions=args.positions,
                               progress=_progress(args))
        print(f"{summary['n_sequences']} sequences ({summary['n_positive']} with injected movers) of shape "
              f"{tuple(summary['shape'])} -> {printable(args.out)}")
        return 0
    if args.ml_command == "train":
        from ssodetect.ml.train import train

        result = train(args.datasets, args.out, epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed,
                       val_fraction=args.val_fraction, progress=_progress(args),
                       command="ssodetect ml train " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "")
        m = result["overall"]
        print(f"validation: accuracy {m['accuracy']:.4f}, ROC AUC {_metric(m['auc'], 5)}, precision "
              f"{_metric(m['precision'])}, recall {_metric(m['recall'])} ({m['n_pos']} movers, {m['n_neg']} "
              "negatives); training "
              f"{result['record']['train_seconds']:.0f} s -> {printable(args.out)}/model.pt")
        return 0
    import numpy as np

    from ssodetect.ml.dataset import load_dataset
    from ssodetect.ml.model import encode, load_model, score
    from ssodetect.ml.train import evaluate

    source = Path(args.source)
    if (source / "objects.ecsv").is_file() and not (source / "dataset.json").is_file():
        from ssodetect.pipeline.ml import score_run

        run_config = source / "config.toml"
        config = load_config(run_config if run_config.is_file() else None)
        config.execution.progress = _progress(args)
        _option(config.ml, "model", args.model, "--model")
        if args.threshold is not None:
            _option(config.ml, "threshold", args.threshold, "--threshold")
        out = Path(args.out) if args.out else None
        if out is not None:
            _check_scores_path(out)
        vetting = score_run(source, config)
        if out is not None:
            from ssodetect.io.outputs import OutputStage

            with OutputStage(out.parent) as stage:
                vetting.write(stage.file(out.name), format="ascii.ecsv")
        kept = int(np.sum(vetting["kept"]))
        print(f"{len(vetting)} objects of {source} scored: {kept} at or above {config.ml.threshold:.2f}, "
              f"{len(vetting) - kept} below" + (f" -> {printable(args.out)}" if args.out else ""))
        for row in vetting:
            print(f"  {row['object']:8s} {row['kind']:8s} {row['rate']:7.2f}\"/h  {row['mag']:6.2f} mag  "
                  f"score {row['ml_score']:.3f}")
        return 0
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:  # (NaN too)
        raise SSODetectError(f"--threshold {args.threshold}: a score threshold lies between 0 and 1")
    if args.out:
        _check_scores_path(Path(args.out))
        if Path(os.path.realpath(source)) in Path(os.path.realpath(args.out)).parents:
            raise SSODetectError(f"--out {args.out}: inside the dataset {source} (an input: its files are never "
                                 "replaced); write the scores elsewhere")
    model, record = load_model(args.model)
    images, masks, meta, doc = load_dataset(source)
    if list(images.shape[2:]) != [record["arch"]["size"]] * 2 or doc["config"]["mode"] != record["arch"]["mode"]:
        raise SSODetectError(f"{source}: sequences {tuple(images.shape[1:])} in {doc['config']['mode']} mode do "
                             f"not fit the model ({record['arch']['size']} px, {record['arch']['mode']} mode)")
    x = encode(images, masks, meta["trail"], meta["sigma"], meta["stretch"], mode=doc["config"]["mode"])
    threshold = record["threshold"] if args.threshold is None else args.threshold
    scores = score(model, x, progress=_progress(args))
    table = meta.copy()
    table["ml_score"] = scores
    table["predicted"] = (scores >= threshold).astype(np.int8)
    if args.out:
        from ssodetect.io.outputs import OutputStage

        out = Path(args.out)
        with OutputStage(out.parent) as stage:
            table.write(stage.file(out.name), format="ascii.ecsv")
    ev = evaluate(meta, scores, threshold)
    m = ev["overall"]
    print(f"{len(scores)} sequences scored; threshold {threshold:.2f}: accuracy {m['accuracy']:.4f}, ROC AUC "
          f"{_metric(m['auc'], 5)}, precision {_metric(m['precision'])}, recall {_metric(m['recall'])}")
    print("rate [\"/h]     movers  negatives  accuracy  ROC AUC")
    for row in ev["by_rate"]:
        print(f"{row['rate_lo']:5.1f}-{row['rate_hi']:<5.1f}  {row['n_pos']:8d}  {row['n_neg']:9d}  {row['accuracy']:8.4f}"
              f"  {row['auc']:7.4f}")
    return 0


def _metric(value: float, digits: int = 4) -> str:
    """A validation metric as printed: ``-`` where it is undefined (precision with no sequence called a mover, recall
    or ROC AUC without a mover), never ``nan``."""
    return f"{value:.{digits}f}" if math.isfinite(value) else "- (undefined: no sequence of a class)"


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line, as every other bad input (``ssodetect: error: ...``, exit 2), and
    where the usage is shown: ``--help``."""

    def error(self, message):
        # a subcommand's parser names it (ssodetect run: ...); the top one's name is the line's own prefix already
        # (campaign 33: "ssodetect: error: ssodetect: argument command: ...")
        named = f"{self.prog}: " if " " in self.prog else ""
        self.exit(2, f"ssodetect: error: {named}{' '.join(str(message).split())} (see {self.prog} --help)\n")


def _innermost_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The (sub)command's own parser of parsed ``args`` (``ssodetect ml train``'s for ``ml train``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if chosen is not None:
                return _innermost_parser(chosen, args)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ssodetect", description="Find moving Solar System Objects in image sequences.",
        epilog="exit status: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()))
    parser.add_argument("--version", action="version", version=f"ssodetect {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="debug log output")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars; warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", parents=[common], help="simulate a Euclid-like sequence with truth")
    p.add_argument("outdir", help="output directory")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 1; a family member's own otherwise)")
    p.add_argument("--family-member", dest="family_member", type=int, default=None,
                   help="draw the scene's recipe (PSF, densities, cosmic rays, hot pixels, movers, directions; headers "
                   "off by 20\", 0.5 deg, 0.5 %%) as member N of the randomised scene family; the other options override")
    p.add_argument("--nccd", type=int, default=None, help="number of CCDs (default 1; 4 for a family member)")
    p.add_argument("--size", type=int, default=2048, help="CCD size in pixels (square; default 2048)")
    p.add_argument("--layout", choices=["mef", "plain"], default="mef", help="Euclid MEF per exposure, or one file per CCD")
    p.add_argument("--n-exposures", dest="n_exposures", type=int, default=None)
    p.add_argument("--movers-per-ccd", dest="movers_per_ccd", type=float, default=None,
                   help="moving objects per 2048x2048 px of detector (default 40; a smaller CCD gets fewer)")
    p.add_argument("--dither", type=float, default=None, help="RMS dither [arcsec]")
    p.add_argument("--cosmic-fraction", dest="cosmic_fraction", type=float, default=None)
    p.add_argument("--no-satellite", action="store_true")
    p.add_argument("--star-density", dest="star_density", type=float, default=None, help="stars per deg^2 (14-26 mag)")
    p.add_argument("--distortion", type=float, default=None, help="true distortion [px] at the corner of a 4k CCD")
    p.add_argument("--pointing-error", dest="header_pointing_error", type=float, default=None, metavar="ARCSEC",
                   help="largest header pointing error per exposure [arcsec]")
    p.add_argument("--rotation-error", dest="header_rotation_error", type=float, default=None, metavar="DEG",
                   help="largest header rotation error per exposure [deg]")
    p.add_argument("--scale-error", dest="header_scale_error", type=float, default=None, metavar="FRACTION",
                   help="largest relative header pixel-scale error")
    p.add_argument("--fast-fraction", dest="fast_fraction", type=float, default=None,
                   help="fraction of movers faster than 10\"/h (trailed)")
    p.add_argument("--fast-rate-max", dest="fast_rate_max", type=float, default=None, help="fastest mover [arcsec/h]")
    p.add_argument("--tracking-drift", dest="tracking_drift", type=float, default=None,
                   help="pointing drift during each exposure [arcsec]: every sky source trailed")
    p.add_argument("--tracking-turn", dest="tracking_angle_step", type=float, default=None, metavar="DEG",
                   help="turn of the drift's direction from one exposure to the next [deg]")
    p.add_argument("--tracked-target", dest="tracked_target", action="store_true",
                   help="non-sidereal tracking: a target (TARGET, V 20) the drift follows, a point")
    p.add_argument("--spikes", action="store_true", help="diffraction spikes on saturated stars")
    p.add_argument("--known-orbits", dest="known_orbits", default=None,
                   help="orbit file of real elements (MPCORB.DAT or JPL SBDB JSON) for known objects in the field")
    p.add_argument("--known-count", dest="known_count", type=int, default=None,
                   help="known objects placed in the field (their orbits go to OUTDIR/known_orbits.json)")
    p.set_defaults(func=_simulate)

    p = sub.add_parser(
        "run", parents=[common], help="run the pipeline on FITS files or directories",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Find the moving objects in a sequence of exposures and report them (ADES, MPC 80-column,\n"
        "tables, an HTML page). The instrument profile is chosen from the headers; every setting has a default.",
        epilog="examples:\n"
        "  ssodetect run night/ --out night_out                       # your frames, defaults\n"
        "  ssodetect run night/ --out night_out --refcat gaia.ecsv --station I41\n"
        "  ssodetect run raw/ bias/ darks/ --out out                  # raw frames: calibration recognised by type\n"
        "  ssodetect run night/ --out night_out --from-step link      # relink after a [link] change\n"
        "  ssodetect run night/ --out night_out --orbits MPCORB.DAT   # name the known objects\n"
        "exit status: 0 ok, 1 ok with warnings, 2 bad input or configuration, 3 internal error")
    p.add_argument("inputs", nargs="+", help="FITS files and/or directories")
    p.add_argument("--out", required=True, help="output directory")
    g = p.add_argument_group("reference data")
    g.add_argument("--refcat", default=None,
                   help="reference catalogue (Gaia DR3 columns: ECSV/FITS/CSV/Parquet, or SCAMP LDAC); 'gaia' queries "
                   "the Gaia archive once (online) and caches the result")
    g.add_argument("--orbits", action="append", default=[],
                   help="orbit file of known objects (MPCORB.DAT or JPL SBDB JSON; repeatable; adds to [known] orbits)")
    g = p.add_argument_group("settings")
    g.add_argument("--config", default=None, help="TOML configuration file (see 'ssodetect config')")
    g.add_argument("--profile", default=None,
                   help="instrument profile: euclid_vis, ground_ccd, small_space, wise, a profile TOML file, or none "
                   "(default auto: chosen from the headers; [profile] name)")
    g.add_argument("--allow-mixed-filters", dest="allow_mixed_filters", action="store_true",
                   help="accept frames of several filters in one run (WISE W1+W2); no magnitudes in ADES/MPC "
                   "([io] allow_mixed_filters)")
    g = p.add_argument_group("reports")
    g.add_argument("--station", default=None, help="MPC observatory code for ADES (overrides the configuration)")
    g.add_argument("--obs-id", dest="obs_id", default=None,
                   help="observation / field identifier (default: from the headers, [io] obs_id_keys)")
    g.add_argument("--keyword", dest="keywords", action="append", default=[],
                   help="a keyword for the run registry and console (repeatable)")
    g = p.add_argument_group("execution")
    group = g.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, default=None, help="local Dask worker processes")
    group.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    g = p.add_argument_group("steps and products")
    g.add_argument("--from-step", dest="from_step", default=None,
                   help="start at this step, the earlier ones loaded from OUT (see 'ssodetect steps')")
    g.add_argument("--to-step", dest="to_step", default=None,
                   help="stop after this step (its products kept in OUT for a later --from-step)")
    g.add_argument("--rerun", action="store_true",
                   help="run every step (by default a step whose inputs, configuration and version are unchanged "
                   "since a run into OUT is loaded from it)")
    g.add_argument("--keep-intermediate", dest="keep_intermediate", action="store_true",
                   help="keep intermediate products under OUT/intermediate/<step>/ ([intermediate] keep)")
    g.add_argument("--ldac", action="store_true",
                   help="with --keep-intermediate: source catalogues also as SExtractor FITS_LDAC ([intermediate] ldac)")
    p.set_defaults(func=_run)

    p = sub.add_parser("batch", parents=[common],
                       help="run many fields, each into OUT/<field>; resumable (complete fields are skipped)")
    p.add_argument("inputs", nargs="+", help="manifests (TOML: [[field]] name, inputs, refcat) and/or directories "
                   "(one field each; a refcat.ecsv inside is used)")
    p.add_argument("--out", required=True, help="batch directory (one sub-directory per field, batch_summary.ecsv)")
    p.add_argument("--config", default=None, help="TOML configuration of every field's run")
    p.add_argument("--profile", default=None,
                   help="instrument profile: euclid_vis, ground_ccd, small_space, wise, a profile TOML file, or none "
                   "(default auto: chosen from the headers; [profile] name)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, default=None, help="local Dask worker processes (one field per task)")
    group.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    p.set_defaults(func=_batch)

    p = sub.add_parser("astrometry", parents=[common], help="fit the WCS of every CCD against a reference catalogue")
    p.add_argument("inputs", nargs="+", help="FITS files and/or directories (never modified)")
    p.add_argument("--refcat", required=True,
                   help="reference catalogue (Gaia DR3 columns or SCAMP LDAC; 'gaia': the archive, cached)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", choices=["head", "fits", "both"], default="head",
                   help="SCAMP-style .head files, FITS copies with the new WCS, or both (default head)")
    p.add_argument("--config", default=None, help="TOML configuration file ([astrometry] section)")
    p.add_argument("--workers", type=int, default=None, help="local Dask worker processes")
    p.set_defaults(func=_astrometry)

    p = sub.add_parser("calibrate", parents=[common],
                       help="build master bias/dark/flat from raw calibration frames (and calibrate the lights)")
    p.add_argument("inputs", nargs="+", help="raw FITS files and/or directories; kinds from IMAGETYP/OBSTYPE")
    p.add_argument("--out", required=True, help="output directory for master_*.fits")
    p.add_argument("--config", default=None, help="TOML configuration file ([calibrate] section)")
    p.add_argument("--lights", action="store_true", help="also write the calibrated light frames to OUT/calibrated")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("evaluate", parents=[common], help="score a run against simulated truth")
    p.add_argument("outdir", help="run output directory (or its observations.ecsv)")
    p.add_argument("truth", help="truth.ecsv written by 'ssodetect simulate'")
    p.add_argument("--rate-min", type=float, default=0.5)
    p.add_argument("--rate-max", type=float, default=10.0)
    p.add_argument("--bright", type=float, default=23.5, help="magnitude limit of the bright completeness summary")
    p.add_argument("--no-write", dest="no_write", action="store_true",
                   help="only print the scores (by default evaluation.ecsv is written into the run directory and its "
                        "report.html redrawn with the completeness plots)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("report", parents=[common],
                       help="rewrite a finished run's reports (ADES PSV/XML, MPC 80-column, report.html) from its outputs")
    p.add_argument("outdir", help="run output directory")
    p.add_argument("--config", default=None, help="TOML configuration (default: the run's config.toml); [report] applies")
    p.set_defaults(func=_report)

    p = sub.add_parser("ml", parents=[common], help="CNN vetting: build datasets, train, predict")
    ml = p.add_subparsers(dest="ml_command", required=True)
    q = ml.add_parser("dataset", parents=[common],
                      help="cut labelled sequences (injected movers, hard negatives) from an exposure sequence")
    q.add_argument("inputs", nargs="+", help="FITS files and/or directories of 3 or more exposures with WCS (never modified)")
    q.add_argument("--out", required=True, help="dataset directory (NPZ shards, meta.ecsv, dataset.json)")
    q.add_argument("--config", default=None, help="run configuration (TOML) for reading and detection")
    q.add_argument("--dataset-config", default=None, help="TOML file of dataset settings (ssodetect.ml.DatasetConfig)")
    q.add_argument("--positions", default=None, help="table (ECSV/CSV/FITS) of chosen positions: columns ra, dec [deg]")
    q.add_argument("-n", "--n-sequences", dest="n_sequences", type=int, default=None, help="sequences per CCD")
    q.add_argument("--seed", type=int, default=None)
    q.add_argument("--mode", choices=["track", "sky"], default=None, help="grid following the track, or fixed on the sky")
    q.add_argument("--size", type=int, default=None, help="grid side [px] (default 32)")
    q.add_argument("--rate-min", dest="rate_min", type=float, default=None, help="slowest mover [arcsec/h]")
    q.add_argument("--rate-max", dest="rate_max", type=float, default=None, help="fastest mover [arcsec/h]")
    q.add_argument("--snr-min", dest="snr_min", type=float, default=None, help="faintest injection (total S/N)")
    q.add_argument("--snr-max", dest="snr_max", type=float, default=None, help="brightest injection (total S/N)")
    q.add_argument("--positive-fraction", dest="positive_fraction", type=float, default=None)
    q.add_argument("--tracks", choices=["linear", "orbits"], default=None, help="linear tracks or real orbits")
    q.add_argument("--orbits", default=None, help="orbit file for --tracks orbits (MPCORB.DAT or JPL SBDB JSON)")
    q.add_argument("--fwhm", type=float, default=None, help="PSF FWHM of injections [px] (default: header or measured)")
    q = ml.add_parser("train", parents=[common], help="train the 3D-CNN on datasets (PyTorch, CPU or GPU)")
    q.add_argument("datasets", nargs="+", help="dataset directories")
    q.add_argument("--out", required=True, help="output directory (model.pt, checkpoint.pt, metrics); resumes a checkpoint")
    q.add_argument("--epochs", type=int, default=10)
    q.add_argument("--batch", type=int, default=128)
    q.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle schedule)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--val-fraction", dest="val_fraction", type=float, default=0.15, help="held-apart validation share")
    q = ml.add_parser("predict", parents=[common],
                      help="score a dataset's sequences (accuracy, ROC AUC) or a finished run's objects")
    q.add_argument("source", help="dataset directory, or the output directory of a finished run")
    q.add_argument("--model", default="builtin", help="model file (default: the model shipped with ssodetect)")
    q.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's)")
    q.add_argument("--out", default=None, help="ECSV table of the scores (with the dataset's metadata, or the run's "
                   "objects)")
    p.set_defaults(func=_ml)

    p = sub.add_parser("steps", parents=[common], help="print the pipeline's step graph (plug-ins included)")
    p.add_argument("--format", choices=["text", "dot", "mermaid"], default="text",
                   help="text, Graphviz DOT or Mermaid (default text)")
    p.set_defaults(func=_steps)

    p = sub.add_parser("serve", parents=[common], help="the operations console in a browser (the [console] extra)",
                       description="Serve the operations console over ROOT: runs newest first, a launch form, each "
                       "run's live log, steps, parameters and products. Runs execute in separate processes.",
                       epilog="examples:\n  ssodetect serve --root ~/nights            # http://127.0.0.1:8765/\n"
                       "  ssodetect serve --root ~/nights --host 0.0.0.0   # a token is made and printed\n"
                       "  ssodetect serve --root /data/runs --watch /data/inbox --watch-config euclid.toml "
                       "--scheduler tcp://head:8786",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=".", help="directory of the runs and their inputs (default: .)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--workers", type=int, default=1, help="runs executed at a time (default 1)")
    p.add_argument("--token", default=None, help="required on every request (made for you off loopback)")
    p.add_argument("--scheduler", default=None,
                   help="Dask scheduler address (tcp://host:8786): the runs compute their CCDs on that cluster")
    g = p.add_argument_group("watch folders (runs queued when a visit has landed; see `ssodetect watch`)")
    g.add_argument("--watch", action="append", default=[], metavar="INBOX",
                   help="folder whose subdirectories are visits (repeatable)")
    g.add_argument("--watch-exposures", type=int, default=4, help="exposures of a complete visit (default 4)")
    g.add_argument("--watch-settle", type=float, default=5.0, help="seconds without a change before it runs (default 5)")
    g.add_argument("--watch-timeout", type=float, default=3600.0,
                   help="seconds before an incomplete visit is shown as such and given up (default 3600)")
    g.add_argument("--watch-config", default=None, help="TOML configuration of the watched runs (its [alerts] notify)")
    g.add_argument("--watch-refcat", default=None, help="reference catalogue of the watched runs")
    g.add_argument("--watch-station", default=None, help="MPC observatory code of the watched runs")
    p.set_defaults(func=_serve)

    p = sub.add_parser("watch", parents=[common], help="run every visit that lands complete in a folder (alerts)",
                       description="Watch INBOX: each subdirectory is a visit; once its frames make --exposures "
                       "exposures and nothing changed for --settle seconds it is run into ROOT/<visit> (the "
                       "configuration's [alerts] send the alert). The queue is ROOT's registry: `ssodetect serve "
                       "--root ROOT` shows it.",
                       epilog="example:\n  ssodetect watch /data/inbox --root /data/runs --config euclid.toml "
                       "--refcat gaia.ecsv",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inbox", help="folder whose subdirectories are visits")
    p.add_argument("--root", required=True, help="where the runs go (and the registry)")
    p.add_argument("--exposures", type=int, default=4, help="exposures of a complete visit (default 4)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds without a change before a visit runs (default 5)")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds before an incomplete visit is reported and given up (default 3600)")
    p.add_argument("--workers", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--config", default=None, help="TOML configuration of the runs (its [alerts] notify)")
    p.add_argument("--refcat", default=None, help="reference catalogue of the runs")
    p.add_argument("--station", default=None, help="MPC observatory code of the runs")
    p.add_argument("--once", action="store_true", help="look once, run what is complete, wait for it and stop")
    p.set_defaults(func=_watch)

    p = sub.add_parser("runs", parents=[common], help="list the runs under a directory, newest first (SQLite registry)",
                       description="List the run directories under ROOT (their manifest.json, up to 4 levels down), "
                       "newest first. The index is brought up to date from the manifests on every call (--rebuild "
                       "makes it anew); it is ROOT/.ssodetect-registry.sqlite where the console or the watcher keeps "
                       "one, otherwise a file in ~/.cache/ssodetect/registries ($XDG_CACHE_HOME): nothing is written "
                       "into ROOT.",
                       epilog="examples:\n  ssodetect runs ~/nights\n  ssodetect runs ~/nights --search 2713 "
                       "--status complete\n  ssodetect runs . --json --limit 1000",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="?", default=".", help="directory holding run directories (default: .)")
    p.add_argument("--search", default="", help="substring of the directory, run or observation id, profile, command")
    p.add_argument("--status", choices=["complete", "partial"], default="", help="only runs in this state")
    p.add_argument("--limit", type=int, default=50, help="rows shown (default 50)")
    p.add_argument("--rebuild", action="store_true", help="empty the registry and read every manifest again")
    p.add_argument("--json", action="store_true", help="one JSON object per run instead of a table")
    p.set_defaults(func=_runs)

    p = sub.add_parser("config", parents=[common], help="print the configuration")
    p.add_argument("--dump", action="store_true", help="print the full documented configuration (default action)")
    p.add_argument("--schema", action="store_true",
                   help="print the JSON Schema of the configuration (for launch forms and input validation)")
    p.add_argument("--file", default=None, help="show this TOML file merged with the defaults")
    p.add_argument("--plain", action="store_true", help="without documentation comments")
    p.set_defaults(func=_config)
    return parser


#: OSError numbers that are the environment's problem (exit 2 with the file and the reason, not an internal error).
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EMFILE, errno.ENFILE,
                       errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR}


def _warning_as_log(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command: a library's warning (e.g. astropy's ErfaWarning for a dubious year)
    becomes one log line naming its category (in run.log too), not counted among the run's warnings (a library
    warning in a Dask worker is not seen here: the exit status must not depend on where the work ran)."""
    text = str(message).strip().splitlines()[0] if str(message).strip() else ""
    log.warning("%s: %s (%s:%d)", category.__name__, text, Path(filename).name, lineno, extra={"uncounted": True})


def _check_text_arguments(args) -> None:
    """Refuse an argument (a path, a name) that is not valid text: bytes undecodable in the file system's encoding
    reach Python as lone surrogates, which no product (TOML, JSON, HTML) can hold."""
    for name, value in vars(args).items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, (str, Path)):
                try:
                    str(item).encode("utf-8")
                except UnicodeEncodeError:
                    shown = str(item).encode("utf-8", "backslashreplace").decode("ascii", "replace")
                    raise SSODetectError(f"{shown}: not valid UTF-8 text (argument {name}); rename it") from None


#: Most exposures a watched visit may need (a visit of more is never complete).
MAX_VISIT_EXPOSURES = 10000

#: Most files a warning names one by one (the rest are counted).
MAX_NAMED = 5

#: Longest error line printed [characters].
MAX_ERROR_CHARS = 2000


class _ShownStdout:
    """Standard output with every line passed through :func:`printable` (line breaks kept): a run directory's name,
    an object's name or a header value printed by a command cannot rewrite the screen."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write("\n".join(printable(line) for line in str(text).split("\n")))
        return len(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


class _AstropyLines(logging.Handler):
    """astropy's own log (its verification of a non-standard card, e.g. ``EXPTIME = 1e5``, printed as three-line
    blocks naming no file) as one uncounted line each, like a library's warning (:func:`_warning_as_log`)."""

    def emit(self, record: logging.LogRecord) -> None:
        lines = [line.strip() for line in record.getMessage().strip().splitlines() if line.strip()]
        if record.levelno < logging.WARNING or not lines or any(noise in lines[0] for noise in _ASTROPY_NOISE):
            return
        log.warning("astropy: %s", lines[0], extra={"uncounted": True})


#: Lines of astropy's verification that say nothing of the card at fault.
_ASTROPY_NOISE = ("Verification reported errors", "uses zero-based indexing")


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, systemd) or SIGHUP (a closed terminal, a dropped ssh session), raised where the
    command is, like Ctrl-C: its stage is discarded and its lock given up (exit 128 + the signal's number)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_sigterm(signum, frame):
    raise _Terminated(signum)


#: The signals that end a command like Ctrl-C.
_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _interrupted(exc: BaseException) -> BaseException | None:
    """Whether ``exc`` was raised because of a Ctrl-C: a compiled kernel (numba) interrupted inside returns a
    ``SystemError`` whose cause or context is the ``KeyboardInterrupt``; returns that interruption (None: not
    interrupted)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def main(argv=None) -> int:
    """Entry point of the ``ssodetect`` command; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the subcommand's parser (argparse's own said "ssodetect: unrecognized arguments")
        _innermost_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(level)  # the run may lower the package level so that run.log records progress
    handler.addFilter(RepeatFilter())  # a warning said again by a later step is printed once
    log.addHandler(handler)
    log.setLevel(level)
    shown = warnings.showwarning
    warnings.showwarning = _warning_as_log  # a library's warning is one counted log line, not a raw two-line dump
    from astropy import log as astropy_log

    astropy_handlers = astropy_log.handlers[:]
    astropy_log.handlers = [_AstropyLines()]
    main_thread = threading.current_thread() is threading.main_thread()
    on_term = {sig: signal.signal(sig, _on_sigterm) for sig in _ENDING_SIGNALS} if main_thread else {}
    stdout, sys.stdout = sys.stdout, _ShownStdout(sys.stdout)
    try:
        _check_text_arguments(args)
        return args.func(args)
    except SSODetectError as exc:
        # one line, whatever a library said: line breaks shown as escapes (cutting at the first one cut a file name
        # holding a newline before the problem was named)
        said = printable(str(exc).strip() or type(exc).__name__)
        print(f"ssodetect: error: {said[:MAX_ERROR_CHARS]}{' ...' if len(said) > MAX_ERROR_CHARS else ''}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        return _stopped(exc)
    except BrokenPipeError as exc:
        if not _stdout_broken():  # (another pipe, a worker's: a defect, said as one)
            log.debug("internal error", exc_info=True)
            print(printable(f"ssodetect: internal error: BrokenPipeError: {exc} (run with -v for the traceback; "
                            "please report it)"), file=sys.stderr)
            return 3
        # the reader of our output went away (``ssodetect runs --json | head``): as SIGPIPE would
        _quiet_stdout()
        return 128 + getattr(signal, "SIGPIPE", 13)
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise_internal = exc
        else:  # the machine's problem, not ours: a full disk, no permission, a read-only file system
            # a failed write often carries no file name: the output directory the command was writing
            where = exc.filename or getattr(args, "out", None) or getattr(args, "outdir", None) or "output"
            print(printable(f"ssodetect: error: {where}: {exc.strerror or exc} (nothing was committed)"),
                  file=sys.stderr)
            return 2
        log.debug("internal error", exc_info=True)
        print(printable(f"ssodetect: internal error: OSError: {raise_internal} (run with -v for the traceback; "
                        "please report it)"), file=sys.stderr)
        return 3
    except Exception as exc:  # a bug: one line, the traceback in debug output
        if _interrupted(exc) is not None:
            return _stopped(_interrupted(exc))
        log.debug("internal error", exc_info=True)
        said = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(printable(f"ssodetect: internal error: {type(exc).__name__}: {said} (run with -v for the traceback; "
                        "please report it)"), file=sys.stderr)
        return 3
    finally:
        sys.stdout = stdout
        warnings.showwarning = shown
        for sig, previous in on_term.items():
            signal.signal(sig, previous)
        astropy_log.handlers = astropy_handlers
        log.removeHandler(handler)


def _stdout_broken() -> bool:
    """Whether standard output is a pipe whose reader went away (poll says POLLERR on its write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # (no poll on this platform, no real file behind sys.stdout)
        return True


def _quiet_stdout() -> None:
    """Point standard output at /dev/null: what is left in its buffer would break the pipe again at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # (no real file behind sys.stdout: nothing to flush at exit)
        pass


def _stopped(exc: KeyboardInterrupt) -> int:
    """The line and exit status of a command stopped by Ctrl-C (130), SIGTERM (143) or SIGHUP (129)."""
    if isinstance(exc, _Terminated):
        print("ssodetect: terminated" + (" (SIGHUP)" if exc.signum == signal.SIGHUP else ""), file=sys.stderr)
        return 128 + int(exc.signum)
    print("ssodetect: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
