"""Many fields, each an independent run into its own sub-directory: resumable, serial or on Dask.

A field is complete when its directory holds ``complete.json``, written last, whose SHA-256 checksums
match every product of the run; a re-run skips complete fields and redoes the others (a field directory
is replaced only when it holds nothing but ssodetect products).  On Dask every field is one task (the
field's own CCD work then runs serially inside the worker); a worker that dies takes its field with it
and the scheduler gives the field to another worker (``retries``); a field that still fails, for any
reason, is marked ``failed`` with the reason and the other fields run.  ``batch_summary.ecsv`` lists
every field.  Field names are single directory names (no ``/``, ``..``, leading dot or absolute path),
so nothing is written outside the batch directory, and one batch process at a time holds the batch
directory (a lock beside it).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from astropy.table import Table

from ssodetect import safejson
from ssodetect.config import Config
from ssodetect.errors import InputError, SSODetectError
from ssodetect.io.frames import check_path_names, find_inputs
from ssodetect.io.outputs import (OutputLock, OutputStage, atomic_write_text, record_files, recorded_files,
                                 check_directory_kind, remove_dead_stages, sha256_file)
from ssodetect.keys import cache_key, sign_text, verify_text
from ssodetect.pipeline.run import named_files
from ssodetect.profiles import resolve_profile

__all__ = ["Field", "COMPLETE", "SUMMARY_COLUMNS", "NO_WORKER_GRACE", "field_complete", "field_state",
           "fields_from_arguments", "run_batch", "run_field", "wait_for_fields"]

log = logging.getLogger(__name__)

COMPLETE = "complete.json"
#: Keys of a manifest's ``[[field]]`` table.
MANIFEST_KEYS = ("name", "inputs", "refcat")
SUMMARY = "batch_summary.ecsv"

SUMMARY_COLUMNS = [
    ("field", "U200", "", "field name (its sub-directory; at most 200 bytes)"),
    ("status", "U8", "", "done (run now) | skipped (complete before) | failed"),
    ("n_objects", "i8", "", "moving objects found"),
    ("n_observations", "i8", "", "observations reported"),
    ("wall_s", "f8", "s", "wall time of the field's run"),
    ("peak_rss_mb", "f8", "MB", "peak memory of the process that ran it"),
    ("warnings", "i8", "", "warnings logged by the field's run (skipped: by its complete run; its run.log has them)"),
    ("message", "U1000", "", "why it failed"),
]


def check_field_name(name: str, source) -> str:
    """``name`` when it is a usable field directory name (one path component inside the batch directory).

    Raises
    ------
    InputError
        Empty, ``.``/``..``, a leading dot (our hidden staging names), a path separator, a NUL or control
        character, the summary's name, a leading or trailing space, or over 200 bytes.
    """
    name = str(name)
    if len(name.encode()) > 200:
        raise InputError(f"{source}: field name {name!r} is {len(name.encode())} bytes long (at most 200: a "
                         "directory name of the file system)")
    if name != name.strip():
        raise InputError(f"{source}: field name {name!r} begins or ends with a space (a directory name easily "
                         "mistaken for another); fields are named by plain words")
    bad = (not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name
           or any(unicodedata.category(c) in ("Cc", "Cs", "Cf", "Zl", "Zp") for c in name) or name == SUMMARY)
    if bad:
        raise InputError(f"{source}: field name {name!r} is not a plain directory name (no '/', '..', leading '.', "
                         f"control characters or {SUMMARY!r}); fields are written only inside the batch directory")
    return name


@dataclass(frozen=True)
class Field:
    """One field of a batch: a name, its input files/directories and an optional reference catalogue."""

    name: str
    inputs: tuple
    refcat: str | None = None


def _read_manifest(path: Path) -> list[Field]:
    """Fields of a TOML manifest: ``[[field]]`` tables with ``name``, ``inputs`` and optional ``refcat``."""
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: unreadable batch manifest ({exc})") from None
    entries = doc.get("field")
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{path}: the manifest needs [[field]] entries (name, inputs, optional refcat)")
    unknown = sorted(set(doc) - {"field"})
    if unknown:
        raise InputError(f"{path}: unknown manifest key(s) {', '.join(unknown)} (only [[field]] tables)")
    fields = []
    for k, entry in enumerate(entries):
        extra = sorted(set(entry) - set(MANIFEST_KEYS)) if isinstance(entry, dict) else []
        if extra:
            raise InputError(f"{path}: field {k + 1}: unknown key(s) {', '.join(extra)} (known: "
                             f"{', '.join(MANIFEST_KEYS)})")
        inputs = entry.get("inputs") if isinstance(entry, dict) else None
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(entry, dict) or not entry.get("name") or not inputs:
            raise InputError(f"{path}: field {k + 1} needs a name and inputs")
        if not isinstance(entry.get("name"), str) or not isinstance(inputs, list) or \
                not all(isinstance(p, str) and p for p in inputs) or \
                not isinstance(entry.get("refcat", ""), str):
            raise InputError(f"{path}: field {k + 1}: name, inputs and refcat must be text (inputs: a path or a list "
                             "of paths)")
        refcat = entry.get("refcat")
        fields.append(Field(check_field_name(entry["name"], path), tuple(str(path.parent / p) for p in inputs),
                            str(path.parent / refcat) if refcat else None))
    return fields


def fields_from_arguments(arguments) -> list[Field]:
    """Fields from manifests (``.toml``) and/or directories (one field each, named after it; a ``refcat.ecsv``
    inside is its reference catalogue)."""
    fields = []
    for arg in map(Path, arguments):
        if arg.is_file() and arg.suffix == ".toml":
            fields.extend(_read_manifest(arg))
        elif arg.is_dir():
            refcat = arg / "refcat.ecsv"
            name = arg.resolve().name
            fields.append(Field(check_field_name(name, arg), (str(arg),), str(refcat) if refcat.is_file() else None))
        else:
            raise InputError(f"{arg}: neither a batch manifest (.toml) nor a directory of frames")
    names = [f.name for f in fields]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"{arguments[0]}: field names must be unique ({', '.join(duplicates)} repeated)")
    return fields


def field_state(field: Field, config: Config) -> dict:
    """What a field's finished run depends on: the files it reads (path, size, modification and change times, inode)
    and the configuration as the run resolves it, with the instrument profile applied (a profile file edited, or
    another one chosen from ``SSODETECT_PROFILE_PATH``, runs the field again: campaign 30).

    The ``[execution]`` section (workers, scheduler, progress) does not change results and is left out.
    """
    inputs = find_inputs(list(field.inputs))
    # and everything else a run reads (as its manifest lists them): reference catalogue, calibration frames, orbit
    # files, a reference WCS, a CNN model
    paths = [str(p) for p in inputs] + [str(p) for p, _ in named_files(field.refcat, config)]
    files = []
    for p in paths:
        try:
            st = Path(p).stat()
        except OSError as exc:
            raise InputError(f"{p}: {exc.strerror or exc} (field {field.name})") from None
        # the change time too: content rewritten in place with the modification time put back (cp -p, rsync -t,
        # tar x) still moves it, and nothing can set it back
        files.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    resolved, profile = resolve_profile(config, inputs)
    settings = {"config": resolved.model_dump(mode="json", exclude={"execution"}), "profile": profile["name"]}
    return {"inputs": files, "config_sha256": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()}


def field_complete(outdir: str | Path, state: dict | None = None) -> bool:
    """True when ``outdir`` holds a finished run: ``complete.json`` and every file it lists, unchanged, and (given
    ``state``, from :func:`field_state`) made from the same input files and configuration."""
    outdir = Path(outdir)
    try:
        record = safejson.read(outdir / COMPLETE)
        signature = record.pop("hmac", None)
        if not verify_text(json.dumps(record, sort_keys=True), COMPLETE, cache_key()[0], signature):
            return False  # written by another key, or edited: run again
        if state is not None and record.get("state") != state:
            return False
        return all(sha256_file(outdir / name) == digest for name, digest in record["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_field(field: Field, outdir: str, config: Config) -> dict:
    """Run one field into ``outdir`` unless it is complete there (the unit of work of a batch).

    Returns
    -------
    dict
        A row of :data:`SUMMARY_COLUMNS`.
    """
    from ssodetect.pipeline.run import run_pipeline

    out = Path(outdir)
    row = {"field": field.name, "status": "skipped", "n_objects": 0, "n_observations": 0, "wall_s": 0.0,
           "peak_rss_mb": 0.0, "warnings": 0, "message": ""}
    if out.is_symlink():  # a link planted in BATCH_DIR would carry the field's products elsewhere
        raise InputError(f"{out}: is a symbolic link; a field's directory must be a directory of BATCH_DIR")
    check_path_names([*field.inputs, field.refcat])  # (campaign 33: a NUL in the refcat was an internal error)
    state = field_state(field, config)
    if field_complete(out, state):
        remove_dead_stages(out)  # (a run killed before an earlier one completed the field: never run again)
        record = safejson.read(out / COMPLETE)
        # the warnings of the run that completed it stay the field's (a re-run does not make them go away)
        warned = int(record.get("warnings", 0))
        row.update(n_objects=record["n_objects"], n_observations=record["n_observations"], warnings=warned)
        if warned:
            log.warning("field %s: complete before, with %d warning(s) (see %s)", field.name, warned, out / "run.log")
        return row
    if (out / COMPLETE).is_file():
        log.info("field %s: its input files or the configuration changed since its run: run again", field.name)
    # a partial run (its directory holds only our products, or run_pipeline refuses it): its steps whose
    # stored products verify are loaded, the others run again, and the new directory replaces it whole
    t0 = time.perf_counter()
    result = run_pipeline(list(field.inputs), out, config, refcat=field.refcat)
    files = {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file() and not p.name.startswith(".")}
    record = {"field": field.name, "inputs": list(field.inputs), "refcat": field.refcat, "files": files,
              "n_objects": len(result.objects), "n_observations": len(result.observations), "state": state,
              "warnings": int(result.warnings)}
    record["hmac"] = sign_text(json.dumps(record, sort_keys=True), COMPLETE, cache_key()[0])
    atomic_write_text(out / COMPLETE, json.dumps(record, indent=2))
    record_files(out, [COMPLETE])
    row.update(status="done", n_objects=len(result.objects), n_observations=len(result.observations),
               wall_s=round(time.perf_counter() - t0, 2), peak_rss_mb=round(_peak_rss_mb(), 1),
               warnings=int(result.warnings))
    return row


def _failed(field: Field, message: str) -> dict:
    return {"field": field.name, "status": "failed", "n_objects": 0, "n_observations": 0, "wall_s": 0.0,
            "peak_rss_mb": 0.0, "warnings": 0,
            # the summary's column holds 1000 characters: a longer message says that it was cut
            "message": message if len(message) <= 1000 else message[:990] + " ... (cut)"}


def _field_task(field: Field, outdir: str, config: Config) -> dict:
    """run_field with any failure of the field turned into a failed row (the batch goes on with the others)."""
    try:
        return run_field(field, outdir, config)
    except SSODetectError as exc:
        # one line, its line breaks escaped (a newline in a file name cut the message before its problem); said on
        # stderr too (campaign 33: only the summary on stdout named it)
        message = (str(exc).strip() or type(exc).__name__).replace("\r", "\\r").replace("\n", "\\n")
        log.error("field %s failed: %s", field.name, message)
        return _failed(field, message)
    except Exception as exc:  # a bug or a resource problem in this field: one line, its traceback with -v
        said = (str(exc).strip().splitlines() or [""])[0][:200]
        log.error("field %s failed: internal error: %s: %s (run with -v for the traceback; please report it)",
                  field.name, type(exc).__name__, said)
        log.debug("field %s: traceback", field.name, exc_info=True)
        return _failed(field, f"internal error: {type(exc).__name__}: {said}")


#: Seconds the Dask cluster may have no worker at all while fields wait before those fields are given up (marked
#: failed; the summary is written): workers killed until their nannies stop restarting them would otherwise leave
#: the batch waiting for ever.
NO_WORKER_GRACE = 60.0


def wait_for_fields(client, futures: list, bar=None, *, grace: float | None = None, poll: float = 1.0) -> set:
    """Wait until every field's future is done, or until the cluster has had no worker for ``grace`` seconds
    (:data:`NO_WORKER_GRACE`); then the futures still pending are cancelled and returned (the others are done).

    ``bar``: a progress bar advanced as fields finish.
    """
    grace = NO_WORKER_GRACE if grace is None else grace
    pending = list(futures)
    idle_since = None
    while True:
        finished = [f for f in pending if f.done()]
        if finished and bar is not None:
            bar.update(len(finished))
        pending = [f for f in pending if not f.done()]
        if not pending:
            return set()
        try:
            workers = len((client.scheduler_info() or {}).get("workers") or {})
        except Exception:  # the scheduler itself is gone: no worker either
            workers = 0
        if workers:
            idle_since = None
        else:
            idle_since = time.monotonic() if idle_since is None else idle_since
            if time.monotonic() - idle_since >= grace:
                log.error("batch: no Dask worker alive for %g s with %d field(s) waiting; they are marked failed",
                          grace, len(pending))
                for future in pending:
                    future.cancel()
                return set(pending)
        time.sleep(poll)


def run_batch(fields: list[Field], out: str | Path, config: Config, *, client=None, retries: int = 2) -> Table:
    """Run every field into ``out/<name>`` and write ``out/batch_summary.ecsv``.

    Parameters
    ----------
    fields : list of Field
    out : path
        Batch directory.
    config : Config
        Run configuration of every field; ``[execution] workers > 1`` or ``scheduler`` runs the fields
        on Dask (one task per field), otherwise one after another here.
    client : dask.distributed.Client, optional
        An existing client to submit to (overrides ``[execution]``).
    retries : int
        Times a field is resubmitted after its worker died.

    Returns
    -------
    Table
        The summary (:data:`SUMMARY_COLUMNS`), also written to ``batch_summary.ecsv``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    check_directory_kind(out, "batch")  # (a batch written into a run's or a scene's directory)
    from ssodetect.pipeline.executor import require_extras

    require_extras(config.execution, astroscrappy=config.clean.astroscrappy)
    lock = OutputLock(out)  # one batch process per batch directory
    try:
        summary = out / SUMMARY
        if summary.is_symlink() or summary.exists():  # the summary would be refused after the work: refused now
            if not summary.is_file() or summary.is_symlink() or SUMMARY not in (recorded_files(out) or set()):
                raise InputError(f"{summary}: a file ssodetect did not write (or changed since) where the batch "
                                 "summary goes; move it away or choose another batch directory")
        out.mkdir(parents=True, exist_ok=True)
        return _run_batch(fields, out, config, client, retries, lock)
    finally:
        lock.release()


def _run_batch(fields: list[Field], out: Path, config: Config, client, retries: int, lock: OutputLock) -> Table:
    from tqdm.auto import tqdm

    from ssodetect.columns import describe
    from ssodetect.report.tables import rows_table

    ex = config.execution
    field_config = config.model_copy(deep=True)
    field_config.execution.workers, field_config.execution.scheduler = 1, ""
    field_config.execution.progress = False
    targets = [(f, str(out / f.name)) for f in fields]
    own_client = None
    if client is None and (ex.scheduler or ex.workers > 1):
        from ssodetect.pipeline.executor import DaskExecutor

        own_client = DaskExecutor(workers=ex.workers, address=ex.scheduler or None)
        client = own_client.client
    try:
        if client is None:
            rows = [_field_task(f, o, field_config)
                    for f, o in tqdm(targets, desc="fields", unit="field", disable=not ex.progress)]
        else:
            futures = [client.submit(_field_task, f, o, field_config, key=f"field-{f.name}-{time.time_ns()}",
                                     pure=False, retries=retries) for f, o in targets]
            with tqdm(total=len(futures), desc="fields", unit="field", disable=not ex.progress) as bar:
                abandoned = wait_for_fields(client, futures, bar)
            rows = []
            for (f, _), future in zip(targets, futures):
                if future in abandoned:
                    rows.append(_failed(f, f"not run: no Dask worker alive for {NO_WORKER_GRACE:g} s"))
                    continue
                try:
                    rows.append(future.result())
                except Exception as exc:  # its worker died on every try (KilledWorker) or the task was lost
                    log.error("field %s failed on %d tries: %s: %s", f.name, retries + 1, type(exc).__name__, exc)
                    rows.append(_failed(f, f"failed on {retries + 1} tries ({type(exc).__name__}: {exc})"))
    finally:
        if own_client is not None:
            own_client.close()
    summary = describe(rows_table(rows, SUMMARY_COLUMNS), SUMMARY_COLUMNS)
    with OutputStage(out, lock=lock) as stage:
        summary.write(stage.file(SUMMARY), format="ascii.ecsv")
    done = sum(r["status"] == "done" for r in rows)
    log.info("batch: %d fields, %d run, %d already complete, %d failed, %d with warnings", len(rows), done,
             sum(r["status"] == "skipped" for r in rows), sum(r["status"] == "failed" for r in rows),
             sum(r["warnings"] > 0 for r in rows))
    return summary
